"""The pure parts of the scheduler: grid marks, interval groups, back-off."""

from __future__ import annotations

import random

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.model import DataType, Point, Table
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.protocol.backoff import BackoffPolicy
from edge_agent.runtime.scheduler import interval_groups, next_mark_ms


def test_next_mark_is_strictly_after_now_on_the_grid() -> None:
    assert next_mark_ms(12_345, 5_000) == 15_000
    assert next_mark_ms(15_000, 5_000) == 20_000
    assert next_mark_ms(0, 1_000) == 1_000


def test_points_group_by_their_own_interval_or_the_device_one() -> None:
    fast = Point(name="a", table=Table.HOLDING_REGISTER, address=0, type=DataType.UINT16, count=1)
    slow = Point(name="b", table=Table.HOLDING_REGISTER, address=1, type=DataType.UINT16, count=1,
                 interval_s=60)
    dev = DeviceConfig(name="d", bus="x", unit_id=1, profile=DeviceProfile("p", "", (fast, slow)),
                       poll_interval_s=5, points=(fast, slow))
    assert interval_groups(dev) == {5_000: (fast,), 60_000: (slow,)}


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    b = BackoffPolicy(base_s=2, cap_s=60, jitter=0.5)
    for failures, ceiling in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (30, 60)]:
        for _ in range(50):
            d = b.delay(failures, rng)
            assert ceiling / 2 <= d <= ceiling
