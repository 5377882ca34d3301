"""Clocks, fixed-rate loops and timestamp grids.

Every sample and command carries a wall-clock timestamp (`time.time()`, seconds) so that they can
be compared across processes and stored with episodes; waiting uses `time.monotonic()`, which
never jumps.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def precise_wait(t_end: float, slack: float = 0.001, clock=time.monotonic) -> None:
    """Sleep until `clock() >= t_end`: coarse sleep, then a short spin for the last `slack` s."""
    remaining = t_end - clock()
    if remaining > slack:
        time.sleep(remaining - slack)
    while clock() < t_end:
        pass


def wall_to_monotonic(t_wall: float) -> float:
    """Convert a `time.time()` stamp to the `time.monotonic()` clock (for scheduling)."""
    return t_wall - time.time() + time.monotonic()


@dataclass
class LoopStats:
    """Per-iteration durations of a fixed-rate loop, with over-budget detection.

    An iteration is over budget when its work ends after its deadline: the commands it sends are
    then already late, which is how a demo silently records nothing if nobody checks.
    """

    dt: float
    name: str = "loop"
    durations: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    overruns: int = 0
    _t_start: float | None = None

    def begin(self) -> None:
        self._t_start = time.monotonic()
        self.starts.append(self._t_start)

    def end(self, deadline: float | None = None) -> bool:
        """Close the iteration started by `begin`; returns True (and warns) when over budget."""
        now = time.monotonic()
        self.durations.append(now - self._t_start)
        late = now > deadline if deadline is not None else self.durations[-1] > self.dt
        if late:
            self.overruns += 1
            log.warning("%s iteration %d over budget: %.1f ms work for a %.1f ms period",
                        self.name, len(self.durations) - 1, 1e3 * self.durations[-1], 1e3 * self.dt)
        return late

    def summary(self, wall_time: float | None = None, steps: int | None = None) -> dict[str, float]:
        """Timing of the loop so far.

        achieved_hz: control steps (default: iterations) per second of wall time; worst/mean_period_s: time between
        iteration starts; worst/mean_work_s: from an iteration's start to its commands being sent.
        """
        n = len(self.durations)
        periods = np.diff(self.starts) if len(self.starts) > 1 else np.zeros(0)
        total = wall_time if wall_time is not None else float(np.sum(periods)) or n * self.dt
        return {"iterations": n, "target_hz": 1.0 / self.dt,
                "achieved_hz": (n if steps is None else steps) / total if total > 0 else 0.0,
                "worst_period_s": float(periods.max()) if len(periods) else 0.0,
                "mean_period_s": float(periods.mean()) if len(periods) else 0.0,
                "worst_work_s": max(self.durations, default=0.0),
                "mean_work_s": float(np.mean(self.durations)) if n else 0.0,
                "overruns": self.overruns}


def grid_indices(timestamps: np.ndarray, start_time: float, dt: float,
                 next_index: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Map samples onto the grid `start_time + k * dt` (Diffusion Policy's accumulate rule).

    A sample at time t covers every grid tick in [next_index, floor((t - start_time) / dt)]:
    ticks it skipped past are filled with it (repeated), and a sample that falls in an already
    filled tick is dropped. Returns (sample_idx, tick_idx, next_index), one pair per tick filled.
    """
    sample_idx, tick_idx = [], []
    for i, t in enumerate(np.asarray(timestamps, dtype=np.float64)):
        last_tick = math.floor((t - start_time) / dt + 1e-9)
        for tick in range(max(next_index, 0), last_tick + 1):
            sample_idx.append(i)
            tick_idx.append(tick)
        next_index = max(next_index, last_tick + 1)
    return np.asarray(sample_idx, dtype=np.int64), np.asarray(tick_idx, dtype=np.int64), next_index


def align_indices(sample_times: np.ndarray, target_times: np.ndarray) -> np.ndarray:
    """For each target time, the index of the latest sample at or before it (0 if none is).

    sample_times: (N,) increasing; target_times: (To,). Returns (To,) int.
    """
    idx = np.searchsorted(np.asarray(sample_times), np.asarray(target_times), side="right") - 1
    return np.clip(idx, 0, None)
