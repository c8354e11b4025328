"""The NOAA sunrise/sunset algorithm against published USNO tables, and where there is none.

Every day of the tables in tests/data/usno (three latitudes: 34.1, 36.95 (the city's) and
43.7 deg N) must agree to within one minute of the published minute. Run this module as a
script (``python -m tests.test_solar``) to print the check table with the differences.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from edge_agent.control.solar import CIVIL, NAUTICAL, OFFICIAL, SunTimes, solar_noon, sun_times

DATA = Path(__file__).parent / "data" / "usno"


class Table:
    """A published table: place, coordinates, zone, and (date, rise, set) in local minutes."""

    def __init__(self, place: str, lat: float, lon: float, zone_h: int,
                 rows: list[tuple[date, int, int]]) -> None:
        self.place, self.lat, self.lon, self.zone_h, self.rows = place, lat, lon, zone_h, rows


def _year_table(name: str, year: int) -> list[tuple[date, int, int]]:
    """(date, rise, set) in minutes after local midnight from a USNO one-year table."""
    rows = []
    for line in (DATA / name).read_text().splitlines():
        if len(line) < 4 or not line[:2].isdigit() or line[2:4] != "  ":
            continue
        day = int(line[:2])
        for month in range(12):
            cell = line[4 + month * 11: 4 + month * 11 + 9]
            if cell.strip():
                r, s = cell.split()
                rows.append((date(year, month + 1, day), int(r[:2]) * 60 + int(r[2:]),
                             int(s[:2]) * 60 + int(s[2:])))
    return sorted(rows)


def _toronto() -> list[tuple[date, int, int]]:
    rows = []
    for line in (DATA / "toronto-2001-04.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            d, r, s = line.split()
            rows.append((date(2001, 4, int(d)), int(r[:2]) * 60 + int(r[2:]),
                         int(s[:2]) * 60 + int(s[2:])))
    return rows


def tables() -> list[Table]:
    """The published tables the algorithm is held to."""
    return [
        Table("Buford GA (USNO 2016)", 34 + 7 / 60, -84.0, -5, _year_table("buford-ga-2016.txt",
                                                                            2016)),
        Table("Fredonia AZ (USNO 2023)", 36 + 57 / 60, -(112 + 31 / 60), -7,
              _year_table("fredonia-az-2023.txt", 2023)),
        Table("Toronto (USNO 2001)", 43 + 40 / 60, -(79 + 25 / 60), -4, _toronto()),
    ]


def _local_minutes(unix_s: float, zone_h: int) -> float:
    t = datetime.fromtimestamp(unix_s, timezone(timedelta(hours=zone_h)))
    return t.hour * 60 + t.minute + (t.second + t.microsecond / 1e6) / 60


def differences(table: Table) -> Iterator[tuple[date, str, int, float, float]]:
    """(date, event, published minute, computed minute, computed - published in seconds)."""
    for day, rise, sset in table.rows:
        st = sun_times(day, table.lat, table.lon, OFFICIAL)
        assert st.sunrise_s is not None and st.sunset_s is not None
        for event, published, at in (("rise", rise, st.sunrise_s), ("set", sset, st.sunset_s)):
            computed = _local_minutes(at, table.zone_h)
            yield day, event, published, computed, (computed - published) * 60


@pytest.mark.parametrize("table", tables(), ids=lambda t: t.place)
def test_every_published_day_within_a_minute(table: Table) -> None:
    worst = max(((abs(d), day, ev) for day, ev, _, _, d in differences(table)))
    assert len(table.rows) >= 30
    # The table is rounded to the minute, so a perfect algorithm is within 30 s of it.
    assert worst[0] <= 60.0, f"{table.place}: {worst[2]} on {worst[1]} off by {worst[0]:.0f} s"


def test_the_city_is_one_clock_shift_from_its_latitude_twin() -> None:
    """At 36.9 N, 116.6 E (UTC+8) the day length matches the USNO table at the same latitude."""
    fredonia = {d: (r, s) for d, r, s in tables()[1].rows}
    for day in (date(2023, 3, 20), date(2023, 6, 21), date(2023, 9, 23), date(2023, 12, 21)):
        city = sun_times(day, 36.9, 116.6)
        assert city.sunrise_s is not None and city.sunset_s is not None
        length_min = (city.sunset_s - city.sunrise_s) / 60
        r, s = fredonia[day]
        # 3' of latitude lengthen a day by well under a minute; the table rounds each end.
        assert abs(length_min - (s - r)) <= 2.0
        local = datetime.fromtimestamp(city.sunrise_s, ZoneInfo("Asia/Shanghai"))
        assert local.date() == day and 4 <= local.hour <= 7


@pytest.mark.parametrize(("day", "polar"), [(date(2024, 6, 21), "day"),
                                            (date(2024, 12, 21), "night")])
def test_polar_day_and_night_have_no_sunrise(day: date, polar: str) -> None:
    for lat in (78.2, 69.65):  # Longyearbyen, Tromso
        st = sun_times(day, lat, 15.6)
        assert st == SunTimes(None, None, st.noon_s, polar)
    south = sun_times(day, -75.0, 0.0)
    assert south.polar == ("night" if polar == "day" else "day")


def test_short_summer_nights_have_no_nautical_dusk_but_a_sunset() -> None:
    # Helsinki at midsummer: the sun sets, but only 6.4 deg deep: nautical dusk never comes.
    st = sun_times(date(2024, 6, 21), 60.17, 24.94, OFFICIAL)
    assert st.sunrise_s is not None and st.polar is None
    assert sun_times(date(2024, 6, 21), 60.17, 24.94, CIVIL).polar is None
    assert sun_times(date(2024, 6, 21), 60.17, 24.94, NAUTICAL).polar == "day"


def test_a_whole_year_at_every_latitude_never_crashes() -> None:
    day = date(2025, 1, 1)
    for i in range(0, 366, 5):
        for lat in range(-90, 91, 15):
            st = sun_times(day + timedelta(days=i), float(lat), 116.6, CIVIL)
            assert (st.sunrise_s is None) == (st.sunset_s is None) == (st.polar is not None)


def test_noon_east_of_greenwich_comes_before_utc_noon() -> None:
    noon = solar_noon(date(2024, 6, 1), 116.6)
    assert datetime.fromtimestamp(noon, UTC).hour == 4


@pytest.mark.parametrize(("lat", "lon", "zenith"), [(91, 0, OFFICIAL), (0, 181, OFFICIAL),
                                                   (0, 0, 120.0), (float("nan"), 0, OFFICIAL)])
def test_out_of_range_is_refused(lat: float, lon: float, zenith: float) -> None:
    with pytest.raises(ValueError):
        sun_times(date(2024, 1, 1), lat, lon, zenith)


def main() -> None:
    """Print the check table: place, date, published, computed, difference."""
    print("| place | date | event | published | computed | difference |")
    print("|---|---|---|---|---|---|")
    for table in tables():
        diffs = list(differences(table))
        for day, ev, pub, comp, d in diffs:
            if day.day in (1, 15) or abs(d) == max(abs(x[4]) for x in diffs):
                s = round(comp * 60)
                print(f"| {table.place} | {day} | {ev} | {pub // 60:02d}:{pub % 60:02d} | "
                      f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d} | {d:+.0f} s |")
        worst = max(abs(x[4]) for x in diffs)
        mean = sum(abs(x[4]) for x in diffs) / len(diffs)
        print(f"| {table.place} | all {len(table.rows)} days | both | | | mean {mean:.0f} s, "
              f"worst {worst:.0f} s |")


if __name__ == "__main__":
    main()
