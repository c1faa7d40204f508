"""Episode loading: decode the frames and photos of an `EpisodePlan`, augment, fix shapes.

`EpisodeLoader((epoch, episode))` returns one episode (B = n_way · q_query query frames) with
the arrays and shapes listed in `jdet.data.pipeline`, which batches episodes with grain.

Per query slot: decode each tile's JPEG (at no more than the query resolution, via libjpeg's
DCT scaling), then letterbox (1 tile) or 2×2 mosaic (4 tiles), random zoom/translate crop,
HSV jitter and horizontal flip (`jdet.data.transforms`); boxes are padded to ``max_boxes``
(extra boxes are cut with a logged warning counter). Support photos are resized to
``support_size``² (bounded LRU cache per process) and weakly augmented. Every random draw
comes from a child of the episode's SeedSequence, one per query slot and per support photo.
"""

from __future__ import annotations

import collections
import io
import logging
import math
import os
import threading

import numpy as np
from PIL import Image

from jdet.data import copy_paste, tfds_source
from jdet.data import transforms as T
from jdet.data.episodes import (
    NO_LABEL,
    EpisodeConfig,
    EpisodePlan,
    SplitIndex,
    Tile,
    episode_rngs,
    plan_episode,
)

log = logging.getLogger(__name__)


def decode_jpeg(data: bytes, min_height: int = 0, min_width: int = 0) -> tuple:
    """JPEG bytes -> ([h, w, 3] uint8 RGB, (sx, sy)) with sx = w / original width.

    With min sizes, libjpeg's DCT scaling (Pillow ``draft``) decodes at 1/2, 1/4 or 1/8 of
    the full size when that still covers (min_height, min_width): several times cheaper for
    big frames that are shrunk to the query size anyway. Box coordinates scale by (sx, sy).
    """
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if min_height and min_width:
            image.draft("RGB", (min_width, min_height))
        rgb = np.asarray(image.convert("RGB"))
    return rgb, (rgb.shape[1] / width, rgb.shape[0] / height)


class EpisodeLoader:
    """(epoch, global episode index) -> one episode as a dict of numpy arrays (see module).

    Opens its TFDS sources lazily in each process (it is pickled into grain workers) and is
    safe to call from grain's reader threads.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        config: EpisodeConfig,
        *,
        seed: int = 0,
        support_cache_size: int = 256,
    ):
        self.data_dir = os.fspath(data_dir)
        self.split = split
        self.config = config
        self.seed = int(seed)
        self.index = SplitIndex(
            tfds_source.load_metadata(data_dir, tfds_source.FRAMES),
            tfds_source.load_metadata(data_dir, tfds_source.REFERENCES),
            split,
        )
        self._support_cache_size = support_cache_size
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._frames = self._references = None
        self._lock = threading.Lock()
        self._support_cache: collections.OrderedDict = collections.OrderedDict()
        self._overflow = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_frames", "_references", "_lock", "_support_cache", "_overflow"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def _sources(self) -> tuple:
        with self._lock:
            if self._frames is None:
                self._frames = tfds_source.load_split(
                    self.data_dir, self.split, config=tfds_source.FRAMES, decode_images=False
                )
                self._references = tfds_source.load_split(
                    self.data_dir, self.split, config=tfds_source.REFERENCES, decode_images=False
                )
        return self._frames, self._references

    # -- loading -----------------------------------------------------------------------------

    def _load_tile(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """Decode one frame record -> ([h, w, 3] uint8, [n, 5] f32 boxes + way label)."""
        frames, _ = self._sources()
        example = frames[tile.record]
        video = self.index.video_of_record(tile.record)
        boxes = tfds_source.example_boxes(example)
        video_id = example["video_id"].decode()
        if video_id != video.video_id or (len(boxes) > 0) != tile.positive:
            raise ValueError(
                f"{tfds_source.dataset_path(self.data_dir)}: record {tile.record} of split "
                f"{self.split!r} is {video_id!r} frame {example['frame_index']} with "
                f"{len(boxes)} boxes, but metadata.json indexes it as {video.video_id!r} "
                f"{'with' if tile.positive else 'without'} a box: rebuild the dataset"
            )
        # Frames are letterboxed (or mosaic-tiled) to query_size before any zoom, as in
        # ultralytics, so decoding needs no more than that resolution.
        ratio = min(1.0, self.config.query_size / max(example["height"], example["width"]))
        min_h = math.ceil(example["height"] * ratio)
        min_w = math.ceil(example["width"] * ratio)
        image, (sx, sy) = decode_jpeg(example["image"], min_h, min_w)
        boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
        if tile.label == NO_LABEL:
            boxes = boxes[:0]  # another video's object: background for this episode
        labels = np.full((len(boxes), 1), tile.label, np.float32)
        return image, np.concatenate([boxes, labels], axis=1)

    def _cutout(self, record: int) -> np.ndarray:
        """Reference record → the object cut from it, RGBA (cached, bounded LRU)."""
        key = ("cutout", record)
        with self._lock:
            if key in self._support_cache:
                self._support_cache.move_to_end(key)
                return self._support_cache[key]
        _, references = self._sources()
        photo, _ = decode_jpeg(references[record]["image"])
        rgba = copy_paste.cutout(photo)
        with self._lock:
            self._support_cache[key] = rgba
            while len(self._support_cache) > self._support_cache_size:
                self._support_cache.popitem(last=False)
        return rgba

    def _pasted_tile(self, tile: Tile, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A positive tile made by copy-paste: a frame of the same video without a box, with
        the object of one of the video's reference photos pasted at the size and in the colour
        of the real box of `tile` (the real frame is decoded for that)."""
        video = self.index.video_of_record(tile.record)
        real, real_boxes = self._load_tile(tile)
        if not len(video.negatives) or not len(video.references) or not len(real_boxes):
            return real, real_boxes
        background, _ = self._load_tile(Tile(int(rng.choice(video.negatives)), tile.label, False))
        if background.shape != real.shape:  # another resolution: use the real frame
            return real, real_boxes
        x1, y1, x2, y2 = real_boxes[0, :4]
        patch = real[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
        rgba = self._cutout(int(rng.choice(video.references)))
        image, box = copy_paste.paste(background, rgba, (x2 - x1, y2 - y1), rng, colour_patch=patch)
        return image, np.array([[*box, tile.label]], np.float32)

    def _query(self, tiles: tuple[Tile, ...], rng: np.random.Generator) -> tuple:
        """One query image [s, s, 3] uint8 and its boxes [n, 5] (xyxy + way label)."""
        cfg = self.config
        size = cfg.query_size
        loaded = []
        for t in tiles:
            paste = cfg.augment and cfg.copy_paste > 0 and t.positive and t.label != NO_LABEL
            if paste and rng.random() < cfg.copy_paste:
                loaded.append(self._pasted_tile(t, rng))
            else:
                loaded.append(self._load_tile(t))
        if len(loaded) == 4:  # mosaic: 2s canvas, then the affine crops back to s
            image, boxes = T.mosaic4([x[0] for x in loaded], [x[1] for x in loaded], rng, size=size)
        else:
            image, boxes = T.letterbox(loaded[0][0], loaded[0][1], size)
        if not cfg.augment:  # letterbox only: every box stays, however small
            return image, T.clip_and_filter(boxes, size, size, min_size=1e-3, min_visible=0.0)
        image, boxes = T.random_affine(
            image, boxes, rng, out_size=size, scale=cfg.scale, translate=cfg.translate
        )
        image, boxes = T.hsv_jitter(
            image, boxes, rng, hue=cfg.hsv_h, saturation=cfg.hsv_s, value=cfg.hsv_v
        )
        return T.hflip(image, boxes, rng, p=cfg.flip_prob)

    def _support_photo(self, record: int) -> np.ndarray:
        """Reference record -> [S, S, 3] uint8 resized (cached, bounded LRU)."""
        with self._lock:
            if record in self._support_cache:
                self._support_cache.move_to_end(record)
                return self._support_cache[record]
        _, references = self._sources()
        size = self.config.support_size
        image, _ = decode_jpeg(references[record]["image"], size, size)
        image, _ = T.resize(image, T.as_boxes(None), size, size)
        with self._lock:
            self._support_cache[record] = image
            while len(self._support_cache) > self._support_cache_size:
                self._support_cache.popitem(last=False)
        return image

    def _box_arrays(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[n, 5] -> boxes [M, 4] f32, labels [M] i32, mask [M] bool (first M kept)."""
        m = self.config.max_boxes
        if len(boxes) > m:
            self._overflow += 1
            if self._overflow & (self._overflow - 1) == 0:  # 1st, 2nd, 4th, 8th ... time
                log.warning(
                    "a query had %d boxes > max_boxes=%d; kept the first %d "
                    "(%d such queries so far in this process)",
                    len(boxes),
                    m,
                    m,
                    self._overflow,
                )
            boxes = boxes[:m]
        out_boxes = np.zeros((m, 4), np.float32)
        out_labels = np.zeros((m,), np.int32)
        mask = np.zeros((m,), bool)
        out_boxes[: len(boxes)] = boxes[:, :4]
        out_labels[: len(boxes)] = boxes[:, 4].astype(np.int32)
        mask[: len(boxes)] = True
        return out_boxes, out_labels, mask

    def load(self, plan: EpisodePlan, augment_seq: np.random.SeedSequence) -> dict:
        """Decode + augment a plan -> one episode's arrays (B = n_way · q_query)."""
        cfg = self.config
        n_valid = len(plan.videos)
        child_seqs = augment_seq.spawn(len(plan.queries) + n_valid * cfg.k_shot)  # queries, photos
        support = np.zeros(
            (cfg.n_way, cfg.k_shot, cfg.support_size, cfg.support_size, 3), np.float32
        )
        for way, records in enumerate(plan.support):
            for shot, record in enumerate(records):
                rng = np.random.default_rng(child_seqs[len(plan.queries) + way * cfg.k_shot + shot])
                photo = self._support_photo(record)
                mode = cfg.support_mode if cfg.augment else "none"
                support[way, shot] = T.to_unit_float(
                    T.support_transform(photo, rng, size=cfg.support_size, mode=mode)
                )
        batch = {key: [] for key in ("query", "boxes", "labels", "box_mask")}
        for slot, seq in zip(plan.queries, child_seqs):
            image, boxes = self._query(slot.tiles, np.random.default_rng(seq))
            out_boxes, labels, mask = self._box_arrays(boxes)
            batch["query"].append(T.to_unit_float(image))
            batch["boxes"].append(out_boxes)
            batch["labels"].append(labels)
            batch["box_mask"].append(mask)
        num_queries = len(plan.queries)
        support_mask = np.arange(cfg.n_way) < n_valid
        return {
            "query": np.stack(batch["query"]),
            "support": np.ascontiguousarray(
                np.broadcast_to(support, (num_queries,) + support.shape)
            ),
            "support_mask": np.tile(support_mask, (num_queries, 1)),
            "boxes": np.stack(batch["boxes"]),
            "labels": np.stack(batch["labels"]),
            "box_mask": np.stack(batch["box_mask"]),
            "class_ids": np.tile(np.array(plan.class_ids, np.int32), (num_queries, 1)),
            "query_way": np.array([q.way for q in plan.queries], np.int32),
        }

    def plan(self, epoch: int, episode: int) -> EpisodePlan:
        """The plan of global episode ``episode`` of ``epoch`` (cheap: no decoding)."""
        rng, _ = episode_rngs(self.seed, epoch, episode)
        return plan_episode(self.index, self.config, rng)

    def __call__(self, key: tuple[int, int]) -> dict:
        epoch, episode = key
        rng, augment_seq = episode_rngs(self.seed, epoch, episode)
        return self.load(plan_episode(self.index, self.config, rng), augment_seq)
