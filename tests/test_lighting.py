"""Lighting schedules: the [lighting] config, and what each lamp should do at an instant.

Pure: no bus, no broker, no clock but the instants the tests pick. A whole year of nights at
the city (36.9 N, 116.6 E, Asia/Shanghai) is walked transition by transition.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from edge_agent.config.loader import load_config
from edge_agent.config.model import LightingConfig
from edge_agent.control.lighting import LampState, desired, next_transition
from edge_agent.control.lighting_overrides import Override
from edge_agent.control.solar import CIVIL, sun_times
from edge_agent.protocol.errors import ConfigError
from edge_agent.tools.checkconfig import summarize
from tests.support.sitekit import write_site

CITY = ZoneInfo("Asia/Shanghai")
LAMPS = [("lamp-101", "rs485", 11, "streetlight"), ("lamp-102", "rs485", 12, "streetlight"),
         ("lamp-201", "rs485", 13, "streetlight"), ("meter-1", "rs485", 1, "energy_meter")]
LIGHTING = """
[lighting]
latitude = 36.9
longitude = 116.6
timezone = "Asia/Shanghai"

[lighting.groups]
north = ["lamp-101", "lamp-102"]

[lighting.schedules.festival]
lamps = ["group:north"]
dates = [[2026-10-01, 2026-10-07], 2026-12-31]
steps = [{ until = "dawn", level = 100 }]

[lighting.schedules.streets]
lamps = ["group:north", "lamp-201"]
zenith = "civil"
dusk_offset_min = 10
dawn_offset_min = -10
steps = [{ until = "23:00", level = 100 }, { until = "05:00", level = 50 },
         { until = "dawn", level = 80 }]
"""


def _cfg(tmp: Path, lighting: str = LIGHTING) -> LightingConfig:
    cfg = load_config(write_site(tmp, LAMPS, extra=lighting))
    assert cfg.lighting is not None
    return cfg.lighting


def _at(day: date, hh: int, mm: int = 0) -> float:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=CITY).timestamp()


def test_the_config_parses_into_groups_and_schedules(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.lamps == ("lamp-101", "lamp-102", "lamp-201")   # the meter is no lamp
    assert cfg.groups == {"north": ("lamp-101", "lamp-102")}
    streets = cfg.schedules[1]
    assert streets.lamps == ("lamp-101", "lamp-102", "lamp-201")
    assert streets.zenith_deg == CIVIL and streets.dusk_offset_min == 10
    assert [(s.until_min, s.level_pct) for s in streets.steps] == [(1380, 100), (300, 50),
                                                                   (None, 80)]
    assert cfg.schedules[0].dates == ((date(2026, 10, 1), date(2026, 10, 7)),
                                      (date(2026, 12, 31), date(2026, 12, 31)))


@pytest.mark.parametrize(("bad", "words"), [
    ('[lighting]\nlatitude = 95\nlongitude = 1\ntimezone = "UTC"\n', "lighting.latitude = 95"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "Mars/Base"\n', "lighting.timezone"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "../../etc/passwd"\n',
     "IANA time zone"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\ncolour = 1\n',
     "lighting.colour: unknown key"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\n[lighting.groups]\n'
     'x = ["meter-1"]\n', "lighting.groups.x[0] = 'meter-1': expected a lamp"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\n[lighting.schedules.s]\n'
     'lamps = ["group:nope"]\n', "a group defined in [lighting.groups]"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\n[lighting.schedules.s]\n'
     'lamps = ["lamp-101"]\nsteps = [{ until = "05:00", level = 50 }]\n',
     'the last step must be { until = "dawn"'),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\n[lighting.schedules.s]\n'
     'lamps = ["lamp-101"]\nsteps = [{ until = "05:00", level = 50 }, { until = "23:00", '
     'level = 100 }, { until = "dawn", level = 1 }]\n', "rise through the night"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\n[lighting.schedules.s]\n'
     'lamps = ["lamp-101"]\nsteps = [{ until = "25:00", level = 101 }]\n',
     "steps[0].until = '25:00'"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\n[lighting.schedules.s]\n'
     'lamps = ["lamp-101"]\nzenith = "dusky"\n', "lighting.schedules.s.zenith = 'dusky'"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\n[lighting.schedules.s]\n'
     'lamps = ["lamp-101"]\ndates = [[2026-10-07, 2026-10-01]]\n', "first <= last"),
    ('[lighting]\nlatitude = 1\nlongitude = 1\ntimezone = "UTC"\n[lighting.schedules.s]\n'
     'lamps = ["lamp-101"]\ndusk_offset_min = 900\n', "dusk_offset_min = 900.0"),
])
def test_every_problem_names_file_key_value_and_expectation(tmp_path: Path, bad: str,
                                                            words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_site(tmp_path, LAMPS, extra=bad))
    text = str(err.value)
    assert words in text and str(tmp_path / "site.toml") in text, text


def test_a_night_with_its_dim_steps(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    day = date(2026, 3, 10)
    civil = sun_times(day, 36.9, 116.6, CIVIL)
    assert civil.sunset_s is not None
    dusk = civil.sunset_s + 600
    assert desired(cfg, dusk - 1)["lamp-201"] == LampState(False, 0, "day:streets")
    assert desired(cfg, dusk)["lamp-201"] == LampState(True, 100, "schedule:streets")
    assert desired(cfg, _at(day, 22, 59))["lamp-201"].level_pct == 100
    assert desired(cfg, _at(day, 23, 0))["lamp-201"].level_pct == 50
    assert desired(cfg, _at(day + timedelta(days=1), 4, 59))["lamp-201"].level_pct == 50
    assert desired(cfg, _at(day + timedelta(days=1), 5, 0))["lamp-201"].level_pct == 80
    rise = sun_times(day + timedelta(days=1), 36.9, 116.6, CIVIL).sunrise_s
    assert rise is not None
    assert desired(cfg, rise - 601)["lamp-201"].on
    assert not desired(cfg, rise - 600)["lamp-201"].on


def test_holiday_dates_win_and_overrides_win_over_both(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    late = _at(date(2026, 10, 2), 1, 30)    # the night of 1 October: the festival's
    state = desired(cfg, late)
    assert state["lamp-101"] == LampState(True, 100, "schedule:festival")
    assert state["lamp-201"] == LampState(True, 50, "schedule:streets")
    group = Override("group:north", 30, late + 3600, "c1", late - 60)
    own = Override("lamp-102", 0, late + 60, "c2", late - 120)
    state = desired(cfg, late, {"group:north": group, "lamp-102": own})
    assert state["lamp-101"] == LampState(True, 30, "override:group:north")
    assert state["lamp-102"] == LampState(False, 0, "override:lamp-102")   # its own wins
    # Ended overrides are ignored even if passed in: the schedule resumes at the end instant.
    after = desired(cfg, late + 3600, {"group:north": group})
    assert after["lamp-101"] == LampState(True, 100, "schedule:festival")


def test_a_whole_year_transition_by_transition(tmp_path: Path) -> None:
    """Every change of 2026 at the city, found by next_transition, and nothing in between."""
    cfg = _cfg(tmp_path)
    t = _at(date(2026, 1, 1), 12)
    end = _at(date(2027, 1, 1), 12)
    state = desired(cfg, t)
    nights = changes = 0
    on_minutes: list[float] = []
    went_on = 0.0
    while t < end:
        nxt = next_transition(cfg, t)
        assert nxt is not None and t < nxt <= t + 86400
        # Nothing changes strictly between two transitions (checked at their midpoint).
        assert desired(cfg, (t + nxt) / 2) == state
        new = desired(cfg, nxt)
        if new != state:
            changes += 1
            if new["lamp-201"].on and not state["lamp-201"].on:
                nights += 1
                went_on = nxt
            if state["lamp-201"].on and not new["lamp-201"].on:
                on_minutes.append((nxt - went_on) / 60)
        t, state = nxt, new
    assert nights == 365
    # Civil dusk + 10 min to civil dawn - 10 min at 36.9 N: about 8 h in June, 13 h in
    # December.
    assert 7.5 * 60 < min(on_minutes) < 8.5 * 60 and 12.5 * 60 < max(on_minutes) < 13.5 * 60
    # On, 23:00, off every night, and 05:00 too while dawn comes after it (not in summer).
    assert 3 * 365 < changes < 4 * 365


def test_daylight_saving_steps_follow_local_time(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, LIGHTING.replace("Asia/Shanghai", "Europe/Berlin")
               .replace("36.9", "52.5").replace("116.6", "13.4"))
    berlin = ZoneInfo("Europe/Berlin")
    for day in (date(2026, 3, 28), date(2026, 3, 29), date(2026, 10, 24), date(2026, 10, 25)):
        at_23 = datetime(day.year, day.month, day.day, 23, 0, tzinfo=berlin).timestamp()
        assert desired(cfg, at_23 - 1)["lamp-201"].level_pct == 100
        assert desired(cfg, at_23)["lamp-201"].level_pct == 50


def test_polar_night_and_day_never_crash(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, LIGHTING.replace("36.9", "78.2").replace("116.6", "15.6")
               .replace("Asia/Shanghai", "Arctic/Longyearbyen"))
    svalbard = ZoneInfo("Arctic/Longyearbyen")
    noon_dec = datetime(2026, 12, 21, 12, tzinfo=svalbard).timestamp()
    noon_jun = datetime(2026, 6, 21, 12, tzinfo=svalbard).timestamp()
    assert desired(cfg, noon_dec)["lamp-201"].on          # polar night: on all day
    assert not desired(cfg, noon_jun)["lamp-201"].on      # midnight sun: never on
    t = datetime(2026, 1, 1, tzinfo=svalbard).timestamp()
    for _ in range(400):
        nxt = next_transition(cfg, t)
        t = nxt if nxt is not None else t + 86400
        desired(cfg, t)


def test_check_config_shows_tonight(tmp_path: Path) -> None:
    cfg = load_config(write_site(tmp_path, LAMPS, extra=LIGHTING))
    text = summarize(cfg, now_s=_at(date(2026, 3, 10), 12))
    assert "lighting at 36.9000, 116.6000 (Asia/Shanghai): 3 lamps, 1 groups, 2 schedules" in text
    assert "schedule festival: 2 lamps, zenith 90.833 deg, 100 % to dawn; on " \
        "2026-10-01..2026-10-07, 2026-12-31" in text
    assert "100 % to 23:00, 50 % to 05:00, 80 % to dawn; every night" in text
    assert "night of 2026-03-10: on 18:" in text
