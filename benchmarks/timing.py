"""The benchmarks' one timer: wall time of calls, in rounds that interleave several callables.

No jax import at module level: the ultralytics rows time torch code in processes whose peak RSS
is reported, so jax is imported only when a call is synchronised with `block_until_ready`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def block_until_ready(out: Any) -> Any:
    """The default `sync`: wait for jax's asynchronous dispatch (non-arrays pass through)."""
    import jax

    return jax.block_until_ready(out)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall seconds of one callable: its first (warm-up) call and the timed calls after it."""

    first_s: float | None  # the warm-up call (compile + first run for a jitted function)
    times: tuple[float, ...]  # one entry per timed call
    last: Any = None  # what the last call returned

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def best_s(self) -> float:
        return min(self.times)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.times)

    @property
    def total_s(self) -> float:
        return sum(self.times)


def time_calls(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: bool = True,
    sync: Callable[[Any], Any] | None = block_until_ready,
    pause_s: float = 0.0,
) -> dict[str, Timing]:
    """Time `repeats` calls of every fn, in rounds that interleave them (a, b, …, a, b, …) so
    that load from other processes hits each alike.

    warmup: first call every fn once, timed apart (`Timing.first_s`: compile + first run).
    sync: applied to each call's result inside the timed interval (None for eager torch/numpy
    code); the default waits for jax's asynchronous dispatch.
    pause_s: sleep before every timed call (lets the CPU settle between alternating processes).
    """

    def once(fn: Callable[[], Any]) -> tuple[float, Any]:
        start = time.perf_counter()
        out = fn()
        if sync is not None:
            out = sync(out)
        return time.perf_counter() - start, out

    first: dict[str, float] = {}
    last: dict[str, Any] = {}
    for name, fn in fns.items() if warmup else ():
        first[name], last[name] = once(fn)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if pause_s:
                time.sleep(pause_s)
            seconds, last[name] = once(fn)
            times[name].append(seconds)
    return {name: Timing(first.get(name), tuple(times[name]), last.get(name)) for name in fns}


def time_call(fn: Callable[[], Any], repeats: int, **kwargs: Any) -> Timing:
    """`time_calls` of a single callable."""
    return time_calls({"fn": fn}, repeats, **kwargs)["fn"]
