"""Value models of the simulated devices: pure functions of simulated time and a seed.

Every model maps (wall time ``t`` in seconds, the device's overrides) to engineering values by
point name. Time of day is taken in UTC. Noise is a hash of (seed, device, point, time bucket),
so the same seed and time always give the same value and no state is carried between calls.
Counters (energy, volume, burning hours) are closed-form integrals of a strictly positive rate,
so they never fall as time advances. Points a model does not know (custom profiles, renamed
points) get a generic value that fits any register type.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from edge_agent.drivers.model import DataType, Point
from edge_agent.protocol.readings import Value

DAY_S = 86_400.0
HOUR_S = 3_600.0
# Counters start at their per-device base value on 2020-01-01 00:00 UTC (the "installation"),
# so totals stay plausible (and inside uint32 litres) instead of counting from 1970.
INSTALLED = 1_577_836_800.0


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a model sees: simulated time, the device's seeded noise and its overrides."""

    t: float
    device: str
    seed: int
    overrides: Mapping[str, Value]

    @property
    def day_frac(self) -> float:
        """Fraction of the UTC day elapsed, 0 <= f < 1."""
        return (self.t % DAY_S) / DAY_S

    @property
    def tod(self) -> float:
        """Seconds since UTC midnight."""
        return self.t % DAY_S

    def noise(self, key: str, period_s: float = 1.0) -> float:
        """Deterministic noise in [-1, 1] for ``key``, constant within each ``period_s`` bucket."""
        return _unit(self.seed, self.device, key, math.floor(self.t / period_s)) * 2.0 - 1.0

    @property
    def age_s(self) -> float:
        """Seconds since installation (0 before it)."""
        return max(0.0, self.t - INSTALLED)

    def const(self, key: str, low: float, high: float) -> float:
        """A per-device constant in [low, high) (ratings, counter bases)."""
        return low + (high - low) * _unit(self.seed, self.device, key, 0)

    def get(self, name: str, default: Value) -> Value:
        """The override for ``name`` if one was written or set, else ``default``."""
        return self.overrides.get(name, default)


def _unit(seed: int, device: str, key: str, bucket: int) -> float:
    """A uniform number in [0, 1) from a hash of its arguments."""
    digest = hashlib.blake2b(f"{seed}|{device}|{key}|{bucket}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _wave(frac: float, harmonics: Sequence[tuple[float, float, float]]) -> float:
    """1 + sum(a * sin(2π k (frac - phase))) for (k, a, phase) in ``harmonics``."""
    return 1.0 + sum(a * math.sin(2 * math.pi * k * (frac - ph)) for k, a, ph in harmonics)


def _wave_integral_s(t: float, harmonics: Sequence[tuple[float, float, float]]) -> float:
    """Integral of ``_wave`` over seconds from 0 to ``t`` (an antiderivative, up to a constant).

    The harmonics' amplitudes sum to less than 1, so the rate is positive and the integral
    strictly rises: counters built on it only go up. It counts from INSTALLED (0 before).
    """

    def antiderivative(x: float) -> float:
        """x + sum(-a / w * cos(w x - 2π k phase)): d/dx is the wave."""
        total = x
        for k, a, ph in harmonics:
            w = 2 * math.pi * k / DAY_S
            total -= a / w * math.cos(w * x - 2 * math.pi * k * ph)
        return total

    return max(0.0, antiderivative(t) - antiderivative(INSTALLED))


# Daily load shapes (k cycles per day, amplitude, phase as a day fraction).
_LOAD = ((1, 0.35, 0.30), (2, 0.20, 0.05))       # household electricity: evening peak
_WATER = ((1, 0.50, 0.25), (2, 0.30, 0.20))      # morning and evening draw-off peaks
_TRAFFIC = ((1, 0.45, 0.30), (2, 0.30, 0.17))    # rush hours at about 8:00 and 17:30


def streetlight(c: Ctx) -> dict[str, Value]:
    """A lamp node: relay and dim level as last written; until then its own fallback schedule.

    Never written, it runs on 18:00-06:00 UTC, 100 % until midnight and 50 % after (a node's
    built-in timer). A written relay switches it; a written dim level is delivered exactly
    while the relay is on. The power and driver temperature follow the delivered level.
    """
    tod = c.tod
    night = tod >= 18 * HOUR_S or tod < 6 * HOUR_S
    relay_on = bool(c.get("relay_on", night))
    schedule = 100 if tod >= 18 * HOUR_S else 50
    command = int(c.get("dim_command", 100))
    commanded = "dim_command" in c.overrides
    level = (max(0, min(100, command)) if commanded else schedule) if relay_on else 0
    rated_w = round(c.const("rated_w", 40.0, 120.0))
    power = rated_w * level / 100 + 0.3 * c.noise("lamp_power") if level else 0.4
    ambient = _ambient(c)
    # Burning hours and energy follow the schedule (12 h a night, 9 h full-power equivalent).
    days = math.floor(c.age_s / DAY_S)  # INSTALLED is a UTC midnight
    night_s = tod if tod < 6 * HOUR_S else 6 * HOUR_S + max(0.0, tod - 18 * HOUR_S)
    full_s = 0.5 * tod if tod < 6 * HOUR_S else 3 * HOUR_S + max(0.0, tod - 18 * HOUR_S)
    if c.t < INSTALLED:
        night_s = full_s = 0.0
    return {
        "relay_on": relay_on,
        "dim_command": command,
        "dim_actual": level,
        "lamp_power": round(max(0.0, power), 1),
        "burning_hours": int(c.const("hours0", 500, 20_000) + (days * 12 * HOUR_S + night_s)
                             / HOUR_S),
        "lamp_fault": False,
        "driver_fault": False,
        "supply_voltage": round(230 + 3 * math.sin(2 * math.pi * c.day_frac)
                                + 0.8 * c.noise("supply_voltage"), 1),
        "driver_temperature": round(ambient + 15 * level / 100 + 0.2 * c.noise("drv_t"), 1),
        "energy_wh": int(c.const("wh0", 1e5, 1e7) + rated_w * (days * 9 * HOUR_S + full_s)
                         / HOUR_S),
    }


def energy_meter(c: Ctx) -> dict[str, Value]:
    """Three phases with a daily load shape; kWh counters are the integral of the load."""
    shape = _wave(c.day_frac, _LOAD)
    out: dict[str, Value] = {}
    total = 0.0
    base_total = 0.0
    for n in (1, 2, 3):
        base = c.const(f"p{n}", 300.0, 2500.0)
        base_total += base
        volts = 230 + 4 * math.cos(2 * math.pi * (c.day_frac - 0.2)) + 0.6 * c.noise(f"v{n}")
        watts = max(0.0, base * shape * (1 + 0.03 * c.noise(f"p{n}")))
        total += watts
        out[f"voltage_l{n}"] = volts
        out[f"current_l{n}"] = watts / (volts * 0.95)
        out[f"power_l{n}"] = watts
    export_base = c.const("export", 20.0, 200.0)
    imported = c.const("kwh0", 1_000.0, 20_000.0) + base_total * _wave_integral_s(c.t, _LOAD) \
        / HOUR_S / 1000
    exported = c.const("exp0", 10.0, 500.0) + export_base * c.age_s / HOUR_S / 1000
    out.update({
        "total_power": total,
        "frequency": 50 + 0.03 * c.noise("hz"),
        "import_kwh": imported,
        "export_kwh": exported,
        "total_kwh": imported + exported,
        "serial_number": int(c.const("serial", 20_000_000, 29_999_999)),
    })
    return out


def water_meter(c: Ctx) -> dict[str, Value]:
    """Flow with morning and evening peaks; the volume counter is its integral (litres)."""
    base_lph = c.const("flow", 20.0, 400.0)
    flow = base_lph * _wave(c.day_frac, _WATER) * (1 + 0.05 * c.noise("flow"))
    litres = c.const("litres0", 1e5, 5e6) + base_lph * _wave_integral_s(c.t, _WATER) / HOUR_S
    return {
        "volume": math.floor(litres) / 1000,
        "flow_rate": round(flow, 1),
        "battery_low": False,
        "leak_alarm": False,
        "tamper_alarm": False,
        "reverse_flow_alarm": False,
        "battery_voltage": round(3.6 - 0.0001 * ((c.t / DAY_S) % 1000), 3),
        "serial_number": f"WM{int(c.const('serial', 1e9, 1e10 - 1)):010d}",
    }


def pipe_sensor(c: Ctx) -> dict[str, Value]:
    """Pressure peaks at night (low demand), with noise; flow follows demand; volume integrates."""
    base_lps = c.const("flow", 5.0, 60.0)
    return {
        "pressure": 4.0 + 0.6 * math.cos(2 * math.pi * (c.day_frac - 0.15))
        + 0.03 * c.noise("pressure"),
        "flow": base_lps * _wave(c.day_frac, _WATER) * (1 + 0.04 * c.noise("flow")),
        "total_volume": c.const("m3", 1e4, 1e6) + base_lps * _wave_integral_s(c.t, _WATER)
        / 1000,
        "level": round(1.2 + 0.3 * math.sin(2 * math.pi * c.day_frac)
                       + 0.01 * c.noise("level"), 2),
        "temperature": round(12 + 2 * math.sin(2 * math.pi * (c.day_frac - 0.4))
                             + 0.1 * c.noise("temp", 60), 1),
        "leak_alarm": False,
        "sensor_fault": False,
    }


@dataclass(frozen=True, slots=True)
class Plan:
    """A fixed-time signal plan: cycle length and each group's green window [start, end)."""

    cycle_s: int
    green: Mapping[int, tuple[int, int]]
    amber_s: int = 3


# Signal plans by number. Groups not listed are dark. Plan 1 off-peak, 2 peak, 3 night.
PLANS: dict[int, Plan] = {
    1: Plan(90, {1: (0, 35), 2: (0, 35), 3: (40, 60), 4: (40, 60), 5: (65, 85), 6: (65, 85)}),
    2: Plan(120, {1: (0, 55), 2: (0, 55), 3: (60, 85), 4: (60, 85), 5: (90, 115),
                  6: (90, 115), 7: (0, 25), 8: (60, 75)}),
    3: Plan(60, {1: (0, 30), 2: (0, 30), 3: (35, 55), 4: (35, 55)}),
    4: Plan(100, {n: (12 * (n - 1), 12 * (n - 1) + 8) for n in range(1, 9)}),
}
DARK, RED, AMBER, GREEN = 0, 1, 2, 3


def plan_colour(plan: Plan, group: int, second: int) -> int:
    """Colour of ``group`` at ``second`` of ``plan``'s cycle: green, then amber, else red."""
    window = plan.green.get(group)
    if window is None:
        return DARK
    start, end = window
    if start <= second < end:
        return GREEN
    if end <= second < end + plan.amber_s:
        return AMBER
    return RED


def scheduled_plan(tod_s: float) -> int:
    """Plan by time of day: peak 07-10 and 16-19, night 22-06, off-peak otherwise."""
    hour = int(tod_s // HOUR_S)
    if 7 <= hour < 10 or 16 <= hour < 19:
        return 2
    if hour >= 22 or hour < 6:
        return 3
    return 1


# Memo keys a write leaves in a device's overrides (``write_memo``): when plan_command was
# written, and the plan running then. Not point names, so only the models read them.
PLAN_AT, PLAN_BEFORE = "_plan_command_at", "_plan_before"


def write_memo(profile: str, written: Mapping[str, Value], before: Mapping[str, Value],
               t: float) -> dict[str, Value]:
    """What a model must remember of a write at ``t`` (a signal plan switches at the end of
    the running cycle, so the cabinet remembers which plan ran and when the order came)."""
    if profile == "signal_cabinet" and "plan_command" in written:
        return {PLAN_AT: t, PLAN_BEFORE: before["active_plan"]}
    return {}


def running_plan(c: Ctx) -> tuple[int, int]:
    """(plan, second of its cycle) at ``c.t``: a written plan takes over at the first cycle
    start of the plan running when it was written (cycles start at multiples of their length);
    a forced plan_command (control ``set``) at once; without one, the time-of-day schedule."""
    command = int(c.get("plan_command", 0))
    if command not in PLANS:
        plan_no = scheduled_plan(c.tod)
        return plan_no, int(c.t) % PLANS[plan_no].cycle_s
    at, before = c.overrides.get(PLAN_AT), c.overrides.get(PLAN_BEFORE)
    if not isinstance(at, int | float) or not isinstance(before, int) or before not in PLANS:
        return command, int(c.t) % PLANS[command].cycle_s
    old = PLANS[before]
    switch_t = (math.floor(at / old.cycle_s) + 1) * old.cycle_s
    if c.t < switch_t:
        return before, int(c.t) % old.cycle_s
    return command, int(c.t - switch_t) % PLANS[command].cycle_s


def signal_cabinet(c: Ctx) -> dict[str, Value]:
    """Groups cycle through the running plan; a written plan_command (1-4) overrides the
    schedule from the end of the cycle running when it was written (``running_plan``)."""
    command = int(c.get("plan_command", 0))
    plan_no, second = running_plan(c)
    plan = PLANS[plan_no]
    flashing = bool(c.get("flash_request", False))
    out: dict[str, Value] = {
        "controller_mode": 1 if flashing else 2,
        "active_plan": plan_no,
        "cycle_second": second,
        "cycle_length": plan.cycle_s,
        "uptime": int((c.age_s + c.const("boot", 0, 1e6)) % (30 * DAY_S)),
        "detector_faults": 0,
        "lamp_faults": 0,
        "plan_command": command,
        "door_open": False,
        "mains_power": True,
        "flash_request": flashing,
    }
    for group in range(1, 9):
        if flashing:
            # Flashing amber, 1 Hz: the groups in the plan blink together.
            colour = AMBER if int(c.t) % 2 == 0 and group in plan.green else DARK
        else:
            colour = plan_colour(plan, group, second)
        out[f"group_{group}"] = colour
    return out


def _ambient(c: Ctx) -> float:
    """Air temperature: 15 °C mean, warmest at 15:00 UTC."""
    return 15 + 6 * math.sin(2 * math.pi * (c.day_frac - 0.375)) + 0.2 * c.noise("air", 60)


def env_monitor(c: Ctx) -> dict[str, Value]:
    """Particulates and noise follow traffic (rush hours); climate follows the sun."""
    traffic = _wave(c.day_frac, _TRAFFIC)
    pm25 = max(0.0, 6 + 10 * traffic + 2 * c.noise("pm25", 10))
    return {
        "pm25": round(pm25, 1),
        "pm10": round(pm25 * 1.6 + 3 * abs(c.noise("pm10", 10)), 1),
        "noise": round(48 + 10 * traffic + 3 * c.noise("noise"), 1),
        "temperature": round(_ambient(c), 1),
        "humidity": round(max(5.0, min(100.0, 65 - 15 * math.sin(
            2 * math.pi * (c.day_frac - 0.375)) + c.noise("rh", 60))), 1),
        "pressure": 1013 + 4 * math.sin(2 * math.pi * c.t / (5 * DAY_S)) + 0.2 * c.noise("hpa"),
        "model": "ENV-1000",
    }


MODELS: dict[str, Callable[[Ctx], dict[str, Value]]] = {
    "streetlight": streetlight,
    "energy_meter": energy_meter,
    "water_meter": water_meter,
    "pipe_sensor": pipe_sensor,
    "signal_cabinet": signal_cabinet,
    "env_monitor": env_monitor,
}


def generic_value(point: Point, c: Ctx) -> Value:
    """A value any point can encode: False, a raw register near 1000, or the text 'SIM'."""
    if point.table.is_bit or point.type is DataType.BOOL:
        return False
    if point.type is DataType.STRING:
        return "SIM"
    if point.bit is not None:
        return 0
    raw = 1000 + round(100 * c.noise(point.name, 10))
    if point.type in (DataType.FLOAT32, DataType.FLOAT64):
        return raw * point.scale + point.offset
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    return raw * point.scale + point.offset


def values_at(profile: str, points: Sequence[Point], t: float, *, device: str, seed: int,
              overrides: Mapping[str, Value]) -> dict[str, Value]:
    """Every point's engineering value at time ``t``: model, then generic fill, then overrides."""
    ctx = Ctx(t=t, device=device, seed=seed, overrides=overrides)
    model = MODELS.get(profile)
    produced = model(ctx) if model is not None else {}
    out: dict[str, Value] = {}
    for p in points:
        if p.name in overrides:
            out[p.name] = overrides[p.name]
        elif p.name in produced:
            out[p.name] = produced[p.name]
        else:
            out[p.name] = generic_value(p, ctx)
    return out


__all__ = ["MODELS", "PLANS", "Ctx", "Plan", "plan_colour", "running_plan", "scheduled_plan",
           "values_at", "write_memo"]
