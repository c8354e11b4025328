"""Capped exponential back-off with jitter: the one policy for reconnects, retries and dead devices.

Pure: callers sleep. The ceiling after ``n`` consecutive failures is ``min(cap, base * 2**(n-1))``;
the delay drawn is uniform in ``[ceiling * (1 - jitter), ceiling]``. Full jitter (1.0) spreads a
fleet's reconnects after a broker restart; the scheduler uses 0.5 so a dead device is never
probed again at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait after consecutive failures."""

    base_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 1.0  # fraction of the ceiling that is random

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got {self.base_s}, {self.cap_s}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be in 0..1, got {self.jitter}")

    def ceiling(self, failures: int) -> float:
        """The largest delay after ``failures`` consecutive failures (>= 1)."""
        # cap the exponent, not only the result: 2 ** 10_000 would overflow a float
        return min(self.cap_s, self.base_s * float(2 ** min(max(0, failures - 1), 60)))

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` consecutive failures, jittered."""
        ceiling = self.ceiling(failures)
        return ceiling * (1.0 - self.jitter * rng.random())


class Backoff:
    """A policy with its failure count, for a loop that retries one thing (a connection)."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0,
                 rng: random.Random | None = None, *, jitter: float = 1.0) -> None:
        self.policy = BackoffPolicy(base_s, cap_s, jitter)
        self.attempt = 0
        self._rng = rng or random.Random()

    @property
    def base_s(self) -> float:
        """The first delay's ceiling."""
        return self.policy.base_s

    @property
    def cap_s(self) -> float:
        """The largest delay ever drawn."""
        return self.policy.cap_s

    def ceiling(self) -> float:
        """The largest delay the next attempt may draw."""
        return self.policy.ceiling(self.attempt + 1)

    def next_delay(self) -> float:
        """Draw the next delay and move to the next attempt."""
        self.attempt += 1
        return self.policy.delay(self.attempt, self._rng)

    def reset(self) -> None:
        """Start again from the base delay (after a connection succeeded)."""
        self.attempt = 0
