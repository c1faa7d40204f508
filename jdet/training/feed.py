"""Feeding the train step: host batches → global device arrays, a few steps ahead.

`DevicePrefetch` runs the data iterator and the host→device copy in a background thread, so
both overlap the running step (on a GPU the copy of batch n+1 overlaps step n). Each item
carries the iterator state *after* its batch, which is what a checkpoint taken after that
step must save: the iterator itself has already run ahead by the prefetch depth.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

import jax
import numpy as np

from jdet.distributed import global_batch


@dataclasses.dataclass
class Fed:
    step: int  # the 0-based step this batch is for
    host: dict[str, np.ndarray]  # this process's share, as read
    device: dict[str, jax.Array]  # the global batch, sharded
    data_state: dict[str, Any]  # iterator state after this batch (what a checkpoint saves)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class DevicePrefetch:
    """Iterator of `Fed` items, `depth` batches ahead in a thread (depth 0: no thread).

    transform(step, host_batch) may change a host batch before it is copied (debug aids).
    Call `close()` (or use ``with``) before closing the underlying iterator.
    """

    def __init__(
        self,
        iterator: Any,
        sharding: jax.sharding.Sharding,
        *,
        depth: int = 2,
        start_step: int = 0,
        transform: Callable[[int, dict], dict] | None = None,
    ):
        self._iterator, self._sharding, self._transform = iterator, sharding, transform
        self._step = start_step
        self._depth = depth
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._fill, name="jdet-prefetch", daemon=True)
            self._thread.start()

    def _produce(self) -> Fed:
        host = {k: np.asarray(v) for k, v in next(self._iterator).items()}
        state = self._iterator.get_state()
        if self._transform is not None:
            host = self._transform(self._step, host)
        item = Fed(self._step, host, global_batch(host, self._sharding), state)
        self._step += 1
        return item

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                item: Fed | _Failure = self._produce()
            except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
                item = _Failure(err)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return

    def __iter__(self) -> Iterator[Fed]:
        return self

    def __next__(self) -> Fed:
        if self._thread is None:
            return self._produce()
        item = self._queue.get()
        if isinstance(item, _Failure):
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.1)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_host(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in batch.items()}
