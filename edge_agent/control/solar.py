"""Sunrise and sunset on the gateway: the NOAA solar position algorithm, pure.

The equations are those of NOAA's Solar Calculator (Global Monitoring Laboratory, "General
Solar Position Calculations" and the NOAA_Solar_Calculations spreadsheet), which follow Jean
Meeus, *Astronomical Algorithms* (2nd ed., ch. 25 "Solar Coordinates" and ch. 28 "Equation of
Time"): the sun's geometric mean longitude and anomaly, the equation of centre, apparent
longitude, obliquity corrected for nutation, declination, and the equation of time. NOAA gives
the result as accurate to about a minute for latitudes within +-72 degrees.

A rise or set is the instant the sun's centre reaches the zenith angle asked for: 90.833 deg
for the official sunrise/sunset (34' of refraction plus 16' of the sun's radius), 96 deg for
civil twilight, 102 nautical, 108 astronomical. The hour angle is computed at the event's own
instant (iterated from an estimate at local solar noon), not once for the whole day as the
spreadsheet does, which keeps the error within a minute also near the equinoxes.

Where the sun never reaches the zenith angle that day (polar day or night, or a summer night
too short for astronomical twilight) the rise and set are ``None`` and ``polar`` says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime

OFFICIAL = 90.833
CIVIL = 96.0
NAUTICAL = 102.0
ASTRONOMICAL = 108.0

_J2000 = 2451545.0
_UNIX_EPOCH_JD = 2440587.5


@dataclass(frozen=True, slots=True)
class SunTimes:
    """One day's events as Unix seconds; ``polar`` is "day" or "night" when there are none."""

    sunrise_s: float | None
    sunset_s: float | None
    noon_s: float
    polar: str | None = None


def _julian_century(unix_s: float) -> float:
    return (unix_s / 86400.0 + _UNIX_EPOCH_JD - _J2000) / 36525.0


def _sun(t: float) -> tuple[float, float]:
    """(declination in degrees, equation of time in minutes) at Julian century ``t``."""
    l0 = (280.46646 + t * (36000.76983 + t * 0.0003032)) % 360.0
    m = 357.52911 + t * (35999.05029 - 0.0001537 * t)
    e = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    mr = math.radians(m)
    centre = (math.sin(mr) * (1.914602 - t * (0.004817 + 0.000014 * t))
              + math.sin(2 * mr) * (0.019993 - 0.000101 * t)
              + math.sin(3 * mr) * 0.000289)
    omega = math.radians(125.04 - 1934.136 * t)
    apparent = math.radians(l0 + centre - 0.00569 - 0.00478 * math.sin(omega))
    mean_obliquity = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813)))
                             / 60.0) / 60.0
    obliquity = math.radians(mean_obliquity + 0.00256 * math.cos(omega))
    declination = math.degrees(math.asin(math.sin(obliquity) * math.sin(apparent)))
    y = math.tan(obliquity / 2) ** 2
    l0r = math.radians(l0)
    eq_time = 4.0 * math.degrees(
        y * math.sin(2 * l0r) - 2 * e * math.sin(mr) + 4 * e * y * math.sin(mr) * math.cos(2 * l0r)
        - 0.5 * y * y * math.sin(4 * l0r) - 1.25 * e * e * math.sin(2 * mr))
    return declination, eq_time


def _hour_angle(lat_deg: float, decl_deg: float, zenith_deg: float) -> float | None:
    """The sun's hour angle (degrees) at the zenith angle, or None if never reached."""
    lat, decl = math.radians(lat_deg), math.radians(decl_deg)
    cos_h = (math.cos(math.radians(zenith_deg)) / (math.cos(lat) * math.cos(decl))
             - math.tan(lat) * math.tan(decl))
    if not -1.0 <= cos_h <= 1.0:
        return None
    return math.degrees(math.acos(cos_h))


def _polar(lat_deg: float, decl_deg: float, zenith_deg: float) -> str:
    """Whether the sun stays above ("day") or below ("night") the zenith angle all day."""
    lat, decl = math.radians(lat_deg), math.radians(decl_deg)
    cos_h = (math.cos(math.radians(zenith_deg)) / (math.cos(lat) * math.cos(decl))
             - math.tan(lat) * math.tan(decl))
    return "day" if cos_h < -1.0 else "night"


def _utc_midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _check(lat_deg: float, lon_deg: float, zenith_deg: float) -> None:
    if not (math.isfinite(lat_deg) and -90.0 <= lat_deg <= 90.0):
        raise ValueError(f"latitude {lat_deg!r}: expected -90..90 degrees")
    if not (math.isfinite(lon_deg) and -180.0 <= lon_deg <= 180.0):
        raise ValueError(f"longitude {lon_deg!r}: expected -180..180 degrees")
    if not (math.isfinite(zenith_deg) and 80.0 <= zenith_deg <= 110.0):
        raise ValueError(f"zenith {zenith_deg!r}: expected 80..110 degrees")


def solar_noon(day: date, lon_deg: float) -> float:
    """The instant of local solar noon (Unix seconds) for the solar day centred on ``day``.

    ``day`` is the calendar date of the noon at that longitude: the day whose noon falls on
    that date in local mean time (so east of Greenwich it comes before 12:00 UTC).
    """
    midnight = _utc_midnight(day)
    noon = midnight + (720.0 - 4.0 * lon_deg) * 60.0
    for _ in range(2):
        _, eq_time = _sun(_julian_century(noon))
        noon = midnight + (720.0 - 4.0 * lon_deg - eq_time) * 60.0
    return noon


def _event(day: date, lat_deg: float, lon_deg: float, zenith_deg: float,
           rising: bool, noon_s: float) -> float | None:
    """Sunrise (``rising``) or sunset at the zenith angle, iterated at the event's instant."""
    midnight = _utc_midnight(day)
    guess = noon_s
    sign = -1.0 if rising else 1.0
    for _ in range(3):
        decl, eq_time = _sun(_julian_century(guess))
        ha = _hour_angle(lat_deg, decl, zenith_deg)
        if ha is None:
            return None
        guess = midnight + (720.0 - 4.0 * (lon_deg - sign * ha) - eq_time) * 60.0
    return guess


def sun_times(day: date, lat_deg: float, lon_deg: float,
              zenith_deg: float = OFFICIAL) -> SunTimes:
    """Sunrise and sunset on ``day`` (the local date at the longitude) for a zenith angle.

    Latitude north positive, longitude east positive, in degrees. ValueError for values out
    of range. No rise or set (polar day or night) gives ``None`` and ``polar``.
    """
    _check(lat_deg, lon_deg, zenith_deg)
    noon = solar_noon(day, lon_deg)
    rise = _event(day, lat_deg, lon_deg, zenith_deg, True, noon)
    sset = _event(day, lat_deg, lon_deg, zenith_deg, False, noon)
    if rise is None or sset is None:
        # Both or neither: at the edge of polar day one iteration may still find an angle.
        decl, _ = _sun(_julian_century(noon))
        return SunTimes(None, None, noon, _polar(lat_deg, decl, zenith_deg))
    return SunTimes(rise, sset, noon)
