"""Episode composition: which frames and reference photos make one N-way K-shot episode.

Pure bookkeeping on record indices (nothing is decoded here): `SplitIndex` is built from the
TFDS record index (`tfds_source.load_metadata`), `plan_episode` draws an `EpisodePlan` from an
explicit ``np.random.Generator``; `jdet.data.loader` decodes and augments it and
`jdet.data.pipeline` batches episodes with grain.

Episode composition (docs/original.md §5; defaults N = 2, K = 3, Q = 4):

- **Ways**: N distinct videos drawn uniformly from the split's videos that have at least one
  box (videos without any box only serve as negatives). With fewer than N such videos the
  extra ways are padding (``support_mask`` False, class id -1).
- **Support**: per way, K of the video's reference photos (a random permutation, repeated
  when the video has fewer than K photos).
- **Queries**: B = N·Q query slots; slot j is drawn for way ``j // Q`` (a random valid way
  when that way is padding). A slot is a *negative* (the way's object is absent, no box) with
  probability ``negative_ratio`` (default 0.25), else a random frame of the way's video that
  has a box. Negatives follow the original's triplet negative strategies
  (``negative_strategy``): "background" = a frame of the way's own video without a box,
  "cross_video" = any frame of a video outside the episode (its object is no way's, so its
  boxes are dropped: a hard negative), "mixed" (default, the original's choice) = either with
  probability 1/2, each falling back to the other when it has no candidate (and to a
  positive when the split has neither). Labels are way indices. The original's episodic
  sampler itself drew only annotated frames; the share of negatives is jdet's setting.
- **Mosaic**: with probability ``mosaic_prob`` a slot becomes a 2×2 mosaic of 4 tiles: its
  own frame plus 3 tiles each drawn for a random valid way (positive or negative by the same
  ratio). The tiles of a negative slot are all negatives, so a negative slot never has boxes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

NO_LABEL = -1  # tile whose boxes belong to no way of the episode (dropped when loading)


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Episode sampling and augmentation settings (defaults: the original, 320² CPU query).

    Sizes are pixels; ``query_size`` must be a multiple of 32 (the detector's largest stride).
    ``episodes_per_batch`` episodes are concatenated into one batch of
    ``episodes_per_batch · n_way · q_query`` query frames. ``episodes_per_epoch`` counts
    episodes over all processes; each of P processes draws ``episodes_per_epoch // P`` of
    them, rounded down to a multiple of ``episodes_per_batch``.
    """

    n_way: int = 2
    k_shot: int = 3
    q_query: int = 4
    query_size: int = 320
    support_size: int = 256
    max_boxes: int = 8
    negative_ratio: float = 0.25
    negative_strategy: str = "mixed"  # "background" | "cross_video" | "mixed" (module doc)
    augment: bool = True  # False: letterbox + resize only (validation episodes)
    mosaic_prob: float = 0.5
    flip_prob: float = 0.5
    hsv_h: float = 15.0
    hsv_s: float = 30.0
    hsv_v: float = 30.0
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 0.1
    support_mode: str = "weak"  # "none" | "weak" | "strong" (transforms.support_transform)
    # Share of positive query frames made by copy-paste (jdet.data.copy_paste): a frame of the
    # same video without its object, with the object cut from a reference photo pasted in at
    # the real box's size and colour. Needs augment; 0 = off.
    copy_paste: float = 0.0
    episodes_per_epoch: int = 500
    episodes_per_batch: int = 1

    def __post_init__(self) -> None:
        for name in (
            "n_way",
            "k_shot",
            "q_query",
            "query_size",
            "support_size",
            "max_boxes",
            "episodes_per_epoch",
            "episodes_per_batch",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EpisodeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.query_size % 32:
            raise ValueError(
                f"EpisodeConfig.query_size must be a multiple of 32, got {self.query_size}"
            )
        for name in ("negative_ratio", "mosaic_prob", "flip_prob", "copy_paste"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"EpisodeConfig.{name} must be in [0, 1], got {getattr(self, name)}"
                )
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(
                f"EpisodeConfig.scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}"
            )
        if not 0.0 <= self.translate < 0.5:
            raise ValueError(f"EpisodeConfig.translate must be in [0, 0.5), got {self.translate}")
        if self.negative_strategy not in ("background", "cross_video", "mixed"):
            raise ValueError(
                "EpisodeConfig.negative_strategy must be background/cross_video/mixed, got "
                f"{self.negative_strategy!r}"
            )
        if self.support_mode not in ("none", "weak", "strong"):
            raise ValueError(
                f"EpisodeConfig.support_mode must be none/weak/strong, got {self.support_mode!r}"
            )

    @property
    def queries_per_episode(self) -> int:
        return self.n_way * self.q_query

    def with_batch_size(self, batch_size: int) -> EpisodeConfig:
        """This config with ``episodes_per_batch`` set so a batch has ``batch_size`` queries
        (per process); ValueError unless batch_size is a multiple of n_way · q_query."""
        if batch_size < 1 or batch_size % self.queries_per_episode:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of n_way·q_query = "
                f"{self.queries_per_episode} (one episode is that many query frames)"
            )
        return dataclasses.replace(self, episodes_per_batch=batch_size // self.queries_per_episode)


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    """One video of a split: record indices of its frames and reference photos."""

    video_id: str
    class_id: int  # global video index (over all videos of the source)
    start: int  # its frame records are start .. start + num_frames (contiguous)
    positives: np.ndarray  # [P] int64 frame-record indices with a box
    negatives: np.ndarray  # [Q] int64 frame-record indices without a box
    references: np.ndarray  # [R] int64 reference-record indices

    @property
    def num_frames(self) -> int:
        return len(self.positives) + len(self.negatives)


class SplitIndex:
    """Per-video record indices of one split, from the frames and references metadata."""

    def __init__(self, frames_meta: dict, references_meta: dict, split: str):
        if frames_meta.get("build") != references_meta.get("build"):
            raise ValueError(
                f"frames and references were built with different options "
                f"({frames_meta.get('build')} vs {references_meta.get('build')}): rebuild both "
                "with scripts/build_dataset.py --overwrite"
            )
        frame_videos = frames_meta["splits"].get(split)
        ref_videos = references_meta["splits"].get(split)
        if frame_videos is None or ref_videos is None:
            raise KeyError(
                f"no split {split!r} in the dataset; available: {sorted(frames_meta['splits'])}"
            )
        refs = {v["video_id"]: v for v in ref_videos}
        self.split = split
        self.videos: list[VideoEntry] = []
        for video in frame_videos:
            if video["video_id"] not in refs:
                raise ValueError(
                    f"video {video['video_id']!r} of split {split!r} has frames "
                    "but no reference photos in the references config"
                )
            start, count = video["start"], video["count"]
            flags = np.zeros(count, bool)
            for a, b in video["positives"]:
                flags[a:b] = True
            offsets = np.arange(start, start + count, dtype=np.int64)
            ref = refs[video["video_id"]]
            self.videos.append(
                VideoEntry(
                    video_id=video["video_id"],
                    class_id=int(video["class_id"]),
                    start=start,
                    positives=offsets[flags],
                    negatives=offsets[~flags],
                    references=np.arange(ref["start"], ref["start"] + ref["count"], dtype=np.int64),
                )
            )
        # frame record -> position in self.videos (to check what was loaded)
        self._starts = np.array([v["start"] for v in frame_videos], np.int64)
        self.way_candidates = np.array(
            [i for i, v in enumerate(self.videos) if len(v.positives) and len(v.references)],
            np.int64,
        )
        if len(self.way_candidates) == 0:
            raise ValueError(
                f"split {split!r} has no video with both a box and a reference "
                "photo: nothing to train on"
            )

    def video_of_record(self, record: int) -> VideoEntry:
        """The video that frame record ``record`` belongs to."""
        return self.videos[int(np.searchsorted(self._starts, record, side="right")) - 1]


@dataclasses.dataclass(frozen=True)
class Tile:
    """One frame of a query image: its frame record and the way its boxes belong to."""

    record: int
    label: int  # way index, or NO_LABEL (boxes dropped)
    positive: bool  # the record has a box (per the index)


@dataclasses.dataclass(frozen=True)
class QuerySlot:
    way: int  # the way this query frame was drawn for
    negative: bool
    tiles: tuple[Tile, ...]  # 1 tile, or 4 for a mosaic


@dataclasses.dataclass(frozen=True)
class EpisodePlan:
    videos: tuple[int, ...]  # positions in SplitIndex.videos of the valid ways
    class_ids: tuple[int, ...]  # [n_way] global class ids, -1 for padded ways
    support: tuple[tuple[int, ...], ...]  # per valid way, k_shot reference records
    queries: tuple[QuerySlot, ...]  # [n_way · q_query]


def _positive_tile(index: SplitIndex, video: int, way: int, rng: np.random.Generator) -> Tile:
    entry = index.videos[video]
    return Tile(int(rng.choice(entry.positives)), way, True)


def _negative_tile(
    index: SplitIndex,
    video: int,
    way: int,
    episode_videos: Sequence[int],
    strategy: str,
    rng: np.random.Generator,
) -> Tile | None:
    """A frame where the way's object is absent, or None when the split has none.

    "background": a frame of the way's own video without a box; "cross_video": any frame of a
    video outside the episode (its object is no way's, so its boxes are dropped); "mixed":
    either, with probability 1/2. Each falls back to the other kind when it has no candidate.
    """
    entry = index.videos[video]
    outsiders = [
        i
        for i in range(len(index.videos))
        if i not in episode_videos and index.videos[i].num_frames
    ]
    cross = strategy == "cross_video" or (strategy == "mixed" and rng.random() < 0.5)
    if (cross and outsiders) or (not len(entry.negatives) and outsiders):
        other = index.videos[outsiders[int(rng.integers(len(outsiders)))]]
        record = other.start + int(rng.integers(other.num_frames))
        return Tile(record, NO_LABEL, bool(np.isin(record, other.positives)))
    if len(entry.negatives):
        return Tile(int(rng.choice(entry.negatives)), way, False)
    return None


def _tile(
    index: SplitIndex,
    video: int,
    way: int,
    negative: bool,
    episode_videos: Sequence[int],
    strategy: str,
    rng: np.random.Generator,
) -> tuple[Tile, bool]:
    """(tile, is_negative); a negative with no candidate falls back to a positive."""
    if negative:
        tile = _negative_tile(index, video, way, episode_videos, strategy, rng)
        if tile is not None:
            return tile, True
    return _positive_tile(index, video, way, rng), False


def plan_episode(index: SplitIndex, config: EpisodeConfig, rng: np.random.Generator) -> EpisodePlan:
    """Draw one episode (see the module docstring); deterministic given ``rng``'s state."""
    n_valid = min(config.n_way, len(index.way_candidates))
    strategy = config.negative_strategy
    videos = tuple(int(v) for v in rng.choice(index.way_candidates, n_valid, replace=False))
    support = []
    for video in videos:
        refs = index.videos[video].references
        order = refs[rng.permutation(len(refs))]
        support.append(tuple(int(r) for r in np.resize(order, config.k_shot)))
    queries = []
    for slot in range(config.queries_per_episode):
        way = slot // config.q_query
        if way >= n_valid:
            way = int(rng.integers(n_valid))
        wants_negative = bool(rng.random() < config.negative_ratio)
        first, negative = _tile(index, videos[way], way, wants_negative, videos, strategy, rng)
        tiles = [first]
        if config.augment and rng.random() < config.mosaic_prob:
            for _ in range(3):
                other = int(rng.integers(n_valid))
                tile_negative = negative or bool(rng.random() < config.negative_ratio)
                tile, got_negative = _tile(
                    index, videos[other], other, tile_negative, videos, strategy, rng
                )
                if negative and not got_negative:
                    break  # no negative frame to fill the mosaic: keep the slot box-free
                tiles.append(tile)
            if len(tiles) != 4:
                tiles = [first]
        queries.append(QuerySlot(way=way, negative=negative, tiles=tuple(tiles)))
    class_ids = tuple(index.videos[v].class_id for v in videos)
    class_ids += (-1,) * (config.n_way - n_valid)
    return EpisodePlan(
        videos=videos, class_ids=class_ids, support=tuple(support), queries=tuple(queries)
    )


def episode_rngs(
    seed: int, epoch: int, episode: int
) -> tuple[np.random.Generator, np.random.SeedSequence]:
    """(planning Generator, SeedSequence for augmentation) of one episode.

    Derived from (seed, epoch, global episode index) only, so an episode is the same whatever
    process, worker or resume point produces it.
    """
    if min(seed, epoch, episode) < 0:
        raise ValueError(f"seed, epoch and episode must be >= 0, got {seed}, {epoch}, {episode}")
    plan_seq, augment_seq = np.random.SeedSequence([seed, epoch, episode]).spawn(2)
    return np.random.default_rng(plan_seq), augment_seq
