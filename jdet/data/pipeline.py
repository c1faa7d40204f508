"""grain input pipeline: fixed-shape episode batches for `jdet.training.steps.train_step`.

    it = make_iterator(data_dir, "train", EpisodeConfig(), seed=0, worker_count=2)
    batch = next(it)                  # dict of numpy arrays, shapes below
    state = it.get_state()            # {"position": 17, ...}: JSON, save it in the checkpoint
    it = make_iterator(...same arguments...); it.set_state(state)   # batch 18 next, identical

`make_dataset` is the underlying grain MapDataset of batches (index-addressable).

Batch (B = episodes_per_batch · n_way · q_query query frames; N = n_way; K = k_shot;
S = support_size; M = max_boxes; H = W = query_size):

    query         [B, H, W, 3]        f32 in [0, 1], letterboxed (grey 114) and augmented
    support       [B, N, K, S, S, 3]  f32 in [0, 1]; the same N·K photos for the Q·N queries
                                      of one episode
    support_mask  [B, N]              bool, False for padded ways (split with < N videos)
    boxes         [B, M, 4]           f32 xyxy pixels of the query image, zero padded
    labels        [B, M]              i32 way index of each box (0 where padded)
    box_mask      [B, M]              bool, True for real boxes
    class_ids     [B, N]              i32 global video index per way (-1 padded)
    query_way     [B]                 i32 the way each query frame was drawn for

Determinism: batch i of a process is a pure function of (seed, epoch, global episode
indices), every random draw comes from ``np.random.SeedSequence([seed, epoch, episode])``
(`episodes.episode_rngs`), so worker count, thread count and restarts never change it.

Sharding: a global batch of ``E = episodes_per_batch · process_count`` episodes is split in
contiguous blocks, process p taking episodes ``b·E + p·episodes_per_batch + j``, so the
processes' batches are disjoint, together are exactly the single-process epoch, and
concatenated in process order they are the single-process batch (`jdet.distributed`).
``EpisodeConfig.episodes_per_batch`` is per process here.

Resume: `EpisodeIterator` state is the number of batches already produced; `set_state`
restarts grain from that index of the (index-addressable) MapDataset. The state is
independent of worker/thread counts and is checked against the pipeline's identity
(dataset build options and split contents, split, seed, shard, episode config).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Self

import grain
import numpy as np

from jdet.data import tfds_source
from jdet.data.episodes import EpisodeConfig
from jdet.data.loader import EpisodeLoader

BATCH_KEYS = (
    "query",
    "support",
    "support_mask",
    "boxes",
    "labels",
    "box_mask",
    "class_ids",
    "query_way",
)


def concat_episodes(episodes: list[dict]) -> dict:
    """grain batch_fn: concatenate episodes along the query axis (B = Σ n_way · q_query)."""
    return {key: np.concatenate([e[key] for e in episodes]) for key in episodes[0]}


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only for the defaults: jdet.data itself does not need jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count={process_count}), got {process_index}"
        )
    return int(process_index), int(process_count)


@dataclasses.dataclass(frozen=True)
class _EpisodeKey:
    """(position in the repeated shard, local rank in the epoch) -> (epoch, global episode):
    local rank l is episode j = l mod per_batch of this process's block of global batch
    b = l div per_batch."""

    per_process: int
    per_batch: int
    process_index: int
    process_count: int

    def __call__(self, position: int, local: int) -> tuple[int, int]:
        b, j = divmod(local, self.per_batch)
        block = (b * self.process_count + self.process_index) * self.per_batch
        return position // self.per_process, block + j


def make_dataset(
    data_dir: str | os.PathLike,
    split: str = "train",
    config: EpisodeConfig | None = None,
    *,
    seed: int = 0,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """This process's batches as an index-addressable grain MapDataset (see module docstring).

    num_epochs None repeats forever (len = sys.maxsize). process_index/process_count default
    to jax.process_index()/jax.process_count(); config None means EpisodeConfig().
    """
    config = config or EpisodeConfig()
    process_index, process_count = _process_shard(process_index, process_count)
    per_batch = config.episodes_per_batch
    per_process = config.episodes_per_epoch // process_count // per_batch * per_batch
    if per_process == 0:
        raise ValueError(
            f"EpisodeConfig.episodes_per_epoch={config.episodes_per_epoch} gives "
            f"no batch of {per_batch} episodes to each of {process_count} processes"
        )
    loader = EpisodeLoader(data_dir, split, config, seed=seed)
    key = _EpisodeKey(per_process, per_batch, process_index, process_count)
    return (
        grain.MapDataset.range(per_process)
        .repeat(num_epochs)
        .map_with_index(key)
        .map(loader)
        .batch(per_batch, batch_fn=concat_episodes, drop_remainder=True)
    )


def make_iterator(
    data_dir: str | os.PathLike,
    split: str = "train",
    config: EpisodeConfig | None = None,
    *,
    seed: int = 0,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    num_threads: int = 2,
    prefetch: int = 4,
) -> EpisodeIterator:
    """`make_dataset` wrapped in an `EpisodeIterator` whose state names this pipeline."""
    config = config or EpisodeConfig()
    process_index, process_count = _process_shard(process_index, process_count)
    dataset = make_dataset(
        data_dir,
        split,
        config,
        seed=seed,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
    )
    metadata = tfds_source.load_metadata(data_dir)  # the data, wherever it lives now
    signature = _signature(
        data={k: v for k, v in metadata["build"].items() if k != "source"},
        videos=[[v["video_id"], v["count"]] for v in metadata["splits"].get(split, [])],
        split=split,
        seed=seed,
        # Not the process index: every process restores process 0's saved state.
        process_count=process_count,
        config=dataclasses.asdict(config),
    )
    return EpisodeIterator(
        dataset,
        signature=signature,
        worker_count=worker_count,
        num_threads=num_threads,
        prefetch=prefetch,
    )


def _signature(**fields: Any) -> str:
    """Short hash of what determines the batch stream (checked by EpisodeIterator.set_state)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


class EpisodeIterator:
    """Iterator over a `make_dataset` MapDataset with a portable, JSON-serialisable state.

    worker_count > 0 decodes in that many processes (grain ``mp_prefetch``); each process, and
    the main one when worker_count = 0, decodes ``num_threads`` batches concurrently
    (grain ``ReadOptions``; Pillow releases the GIL). Call `close()` (or use ``with``) to stop
    the workers.
    """

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        signature: str = "",
        worker_count: int = 0,
        num_threads: int = 2,
        prefetch: int = 4,
        worker_buffer_size: int = 2,
    ):
        if worker_count < 0 or num_threads < 0:
            raise ValueError(
                f"worker_count and num_threads must be >= 0, got {worker_count}, {num_threads}"
            )
        self._dataset = dataset
        self._signature = signature
        self._options = {
            "worker_count": worker_count,
            "num_threads": num_threads,
            "prefetch": prefetch,
            "worker_buffer_size": worker_buffer_size,
        }
        self._position = 0
        self._iterator = None

    def _start(self) -> Any:
        opts = self._options
        ds = self._dataset[self._position :].to_iter_dataset(
            grain.ReadOptions(
                num_threads=opts["num_threads"], prefetch_buffer_size=opts["prefetch"]
            )
        )
        if opts["worker_count"] > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain workers read absl flags
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=opts["worker_count"],
                    per_worker_buffer_size=opts["worker_buffer_size"],
                )
            )
        return iter(ds)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self._start()
        batch = next(self._iterator)
        self._position += 1
        return batch

    def get_state(self) -> dict:
        """{"position": batches produced, "signature": pipeline identity}: JSON-serialisable."""
        return {"position": self._position, "signature": self._signature}

    def set_state(self, state: dict) -> None:
        """Continue after ``state["position"]`` batches (restarts grain and its workers)."""
        if state.get("signature", self._signature) != self._signature:
            raise ValueError(
                "data iterator state was saved by a different pipeline (dataset build, "
                "split, seed, process shard or EpisodeConfig changed): "
                f"{state.get('signature')} != {self._signature}"
            )
        self.close()
        self._position = int(state["position"])

    def close(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
