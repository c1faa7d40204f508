"""A synthetic dataset in the Zalo AI Challenge layout, for quickstarts and tests.

Each video shows one procedurally drawn object (random composite shape, random pattern) that
moves smoothly over an aerial-like landscape, seen by a slowly drifting camera. Per video:
scale and heading change, a tree-canopy patch partly occludes it at some point, the lighting
changes for a while (cloud shadow or sun), it is absent for one or more intervals, and 1-3
distractor objects (other random shapes, not annotated) move around. Three reference photos
show it on plain or textured ground, larger, rotated, foreshortened and colour-jittered.

Boxes are exact: the extent of the pixels where the object is visible (coverage >= 0.5 after
the occluder, inside the frame). Everything is drawn from ``np.random.default_rng([seed,
index])`` per video, so the same seed gives identical annotations.json and reference JPEGs,
and a video's content does not depend on how many videos are generated. The mp4 bytes are
identical too, for a given PyAV/x264 build: videos are encoded with
``write_video(deterministic=True)`` (one thread, no SIMD), because default x264 here gave
different bytes run to run (see `jdet.data.video.write_video`); `tests/test_synthetic.py`
checks it.

    python -m jdet.data.synthetic --out data/synth --num-videos 4 --seed 0

`generate(out_dir, num_videos, seed, **options)` is the Python API.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from jdet.data import render
from jdet.data.video import write_video

VERSION = 1  # bump when the same seed starts giving different data
MIN_VISIBLE_PIXELS = 8  # smaller visible slivers count as absent (no box)


@dataclasses.dataclass(frozen=True)
class Options:
    """Generation settings (the CLI flags)."""

    frames: int = 80
    width: int = 320
    height: int = 192
    fps: int = 25
    num_references: int = 3
    reference_size: int = 256
    crf: int = 23
    gop: int = 25  # one keyframe per second: cheap random access in read_frames
    preset: str = "veryfast"  # x264 speed/size trade-off

    def __post_init__(self):
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 64:
            raise ValueError(f"size must be even and at least 64x64, got "
                             f"{self.width}x{self.height}")
        if self.frames < 20:
            raise ValueError(f"frames must be >= 20 (room for absent intervals), got "
                             f"{self.frames}")
        if self.num_references < 1:
            raise ValueError(f"num_references must be >= 1, got {self.num_references}")


@dataclasses.dataclass
class Mover:
    """An object on a path. sprite [S, S, 4] uint8; per frame t of T: centre [T, 2] f32 (x, y)
    in frame pixels, length [T] f32 sprite side in pixels, angle [T] f32 degrees, present [T]
    bool."""

    sprite: np.ndarray
    centre: np.ndarray
    length: np.ndarray
    angle: np.ndarray
    present: np.ndarray


@dataclasses.dataclass
class Scene:
    """Everything needed to render one video deterministically.

    background: [H + 2m, W + 2m, 3] f32 world; camera: [T, 2] int (x, y) of the frame's
    top-left in the world; occluder: RGBA [s, s, 4] uint8 at world `occluder_xy`; gain: [T, 3]
    f32 per-channel lighting.
    """

    video_id: str
    options: Options
    background: np.ndarray
    camera: np.ndarray
    target: Mover
    distractors: list[Mover]
    occluder: np.ndarray
    occluder_xy: tuple[int, int]
    gain: np.ndarray
    noise_seed: int

    @property
    def absent_frames(self) -> np.ndarray:
        """[K] int: frames in the absent intervals (the object is not drawn)."""
        return np.flatnonzero(~self.target.present)


def _smooth_path(rng: np.random.Generator, t: np.ndarray, extent: float,
                 reach: float) -> np.ndarray:
    """[T] f32 coordinate: the frame centre plus two sinusoids reaching ±reach·extent."""
    amp = extent * reach * rng.uniform(0.6, 1.0)
    slow = np.sin(2 * np.pi * rng.uniform(0.3, 0.9) * t + rng.uniform(0, 2 * np.pi))
    fast = np.sin(2 * np.pi * rng.uniform(1.0, 2.0) * t + rng.uniform(0, 2 * np.pi))
    return (extent / 2 + amp * (0.8 * slow + 0.2 * fast)).astype(np.float32)


def _mover(rng: np.random.Generator, opts: Options, base_length: float,
           present: np.ndarray) -> Mover:
    t = np.linspace(0.0, 1.0, opts.frames)
    centre = np.stack([_smooth_path(rng, t, opts.width, 0.52),
                       _smooth_path(rng, t, opts.height, 0.5)], axis=1)
    # Altitude change: a log-linear ramp plus a wobble.
    log_scale = rng.uniform(-0.8, 0.8) * (t - 0.5) + 0.12 * np.sin(2 * np.pi * t * rng.uniform(
        0.5, 1.5) + rng.uniform(0, 2 * np.pi))
    length = (base_length * np.exp(log_scale)).astype(np.float32)
    angle = (rng.uniform(0, 360) + 360 * rng.uniform(-0.3, 0.3) * t).astype(np.float32)
    return Mover(render.random_object(rng), centre, length, angle, present)


def _presence(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[T] bool: absent for a middle gap, and maybe at the start and/or the end."""
    present = np.ones(frames, bool)
    gap = int(rng.integers(int(0.08 * frames), int(0.18 * frames) + 1))
    start = int(rng.integers(int(0.35 * frames), int(0.65 * frames)))
    present[start:start + gap] = False
    if rng.random() < 0.5:  # enters late
        present[:int(rng.integers(int(0.08 * frames), int(0.2 * frames) + 1))] = False
    if rng.random() < 0.4:  # leaves early
        present[frames - int(rng.integers(int(0.05 * frames), int(0.15 * frames) + 1)):] = False
    return present


def sample_scene(seed: int, index: int, options: Options | None = None) -> Scene:
    """The scene of video `index` of a dataset generated with `seed` (pure function)."""
    opts = options or Options()
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(6)]
    r_bg, r_target, r_distract, r_occ, r_light, r_noise = rngs
    T, W, H = opts.frames, opts.width, opts.height
    unit = min(W, H) / 192  # sizes below are for a 192-pixel short side
    margin = int(24 * unit)
    background = render.aerial_background(r_bg, H + 2 * margin, W + 2 * margin)
    t = np.linspace(0.0, 1.0, T)
    drift = np.stack([np.sin(2 * np.pi * r_bg.uniform(0.2, 0.6) * t + r_bg.uniform(0, 6.3)),
                      np.sin(2 * np.pi * r_bg.uniform(0.2, 0.6) * t + r_bg.uniform(0, 6.3))], 1)
    camera = np.rint(margin + 0.9 * margin * drift).astype(np.int64)

    base = r_target.uniform(30, 56) * unit
    target = _mover(r_target, opts, base, _presence(r_target, T))
    distractors = [_mover(r_distract, opts, base * r_distract.uniform(0.7, 1.3), np.ones(T, bool))
                   for _ in range(int(r_distract.integers(1, 4)))]

    # Occluder: a canopy patch fixed to the ground, placed over one side of the object's
    # position at a present frame, so that it hides part of it when the object passes.
    shown = np.flatnonzero(target.present[5:-5]) + 5
    shown = shown if len(shown) else np.arange(T)  # (presence rules always leave some)
    t_occ = int(shown[len(shown) // 2 + int(r_occ.integers(-len(shown) // 4, len(shown) // 4 + 1))])
    size = max(int(target.length[t_occ] * r_occ.uniform(0.45, 0.65)), 6)
    direction = r_occ.uniform(0, 2 * np.pi)
    offset = 0.3 * target.length[t_occ] * np.array([np.cos(direction), np.sin(direction)])
    world = target.centre[t_occ] + offset + camera[t_occ]
    occluder_xy = (int(round(world[0] - size / 2)), int(round(world[1] - size / 2)))

    # Lighting: per-channel gain ramps to a level (cloud shadow or sun) and back.
    level = r_light.uniform(0.55, 0.8) if r_light.random() < 0.6 else r_light.uniform(1.2, 1.35)
    tint = np.array([1.0, 1.0, 1.0]) + (level - 1) * np.array([0.0, 0.03, 0.1])
    begin = int(r_light.uniform(0.1, 0.6) * T)
    end = min(begin + int(r_light.uniform(0.2, 0.4) * T), T)
    ramp = np.clip(np.minimum(np.arange(T) - begin, end - np.arange(T)) / 5.0, 0, 1)
    gain = (1 + ramp[:, None] * (level * tint - 1)).astype(np.float32)

    return Scene(video_id=f"synth_{index:03d}", options=opts, background=background,
                 camera=camera, target=target, distractors=distractors,
                 occluder=render.canopy_patch(r_occ, size), occluder_xy=occluder_xy,
                 gain=gain, noise_seed=int(r_noise.integers(2**31)))


def _draw(canvas: np.ndarray, mover: Mover, t: int) -> np.ndarray:
    """Draw `mover` at frame t onto canvas [H, W, 3] f32; returns its coverage [H, W] f32."""
    sprite = render.transform_sprite(mover.sprite, float(mover.length[t]), float(mover.angle[t]))
    h, w = sprite.shape[:2]
    cx, cy = mover.centre[t]
    return render.paste(canvas, sprite, int(round(cx - w / 2)), int(round(cy - h / 2)))


def render_frames(scene: Scene) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame [H, W, 3] uint8, visible [H, W] bool) for every frame of the scene.

    `visible` marks the target's pixels that are seen: drawn with coverage >= 0.5 after the
    occluder on top (coverage · (1 - occluder coverage) >= 0.5). Distractors are drawn below
    the target; lighting and sensor noise do not change the mask.
    """
    opts = scene.options
    H, W = opts.height, opts.width
    noise = np.random.default_rng(scene.noise_seed)
    for t in range(opts.frames):
        ox, oy = (int(v) for v in scene.camera[t])
        canvas = scene.background[oy:oy + H, ox:ox + W].copy()
        for distractor in scene.distractors:
            _draw(canvas, distractor, t)
        coverage = (_draw(canvas, scene.target, t) if scene.target.present[t]
                    else np.zeros((H, W), np.float32))
        hidden = render.paste(canvas, scene.occluder, scene.occluder_xy[0] - ox,
                              scene.occluder_xy[1] - oy)
        visible = coverage * (1.0 - hidden) >= 0.5
        canvas *= scene.gain[t]
        canvas += noise.normal(0.0, 1.5, canvas.shape).astype(np.float32)
        yield np.clip(canvas, 0, 255).astype(np.uint8), visible


def box_from_mask(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel-edge box (x1, y1, x2, y2) ints of a [H, W] bool mask; None below
    MIN_VISIBLE_PIXELS. A mask covering columns a..b gives x1 = a, x2 = b + 1."""
    if int(mask.sum()) < MIN_VISIBLE_PIXELS:
        return None
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _annotation_entry(video_id: str, boxes: dict[int, tuple[int, int, int, int]]) -> dict:
    """The annotations.json entry; one group per run of consecutive boxed frames."""
    groups: list[list[dict]] = []
    previous = None
    for frame, (x1, y1, x2, y2) in sorted(boxes.items()):
        if previous is None or frame != previous + 1:
            groups.append([])
        groups[-1].append({"frame": frame, "x1": x1, "y1": y1, "x2": x2, "y2": y2})
        previous = frame
    return {"video_id": video_id, "annotations": [{"bboxes": g} for g in groups]}


def write_sample(root: pathlib.Path, scene: Scene, seed: int, index: int) -> dict:
    """Write one video folder (mp4 + reference JPEGs) under root/samples; returns its entry."""
    opts = scene.options
    folder = root / "samples" / scene.video_id
    references = folder / "object_images"
    references.mkdir(parents=True)
    r_ref = np.random.default_rng([seed, index, 1])  # separate stream: refs don't shift video
    for k in range(opts.num_references):
        w, h = (int(opts.reference_size * r_ref.uniform(0.875, 1.125)) for _ in range(2))
        photo = render.reference_photo(r_ref, scene.target.sprite, w, h)
        Image.fromarray(photo).save(references / f"img_{k + 1}.jpg", quality=92)

    boxes: dict[int, tuple[int, int, int, int]] = {}

    def frames() -> Iterator[np.ndarray]:
        for t, (frame, visible) in enumerate(render_frames(scene)):
            box = box_from_mask(visible)
            if box is not None:
                boxes[t] = box
            yield frame

    write_video(folder / "drone_video.mp4", frames(), opts.fps, crf=opts.crf, gop=opts.gop,
                preset=opts.preset, deterministic=True)
    return _annotation_entry(scene.video_id, boxes)


def generate(out_dir: str | pathlib.Path, num_videos: int, seed: int, *,
             val_fraction: float = 0.0, overwrite: bool = False, **options) -> pathlib.Path:
    """Write a synthetic dataset and return `out_dir`.

    With val_fraction == 0 the split is out_dir itself (out_dir/samples, out_dir/annotations);
    otherwise out_dir/train and out_dir/val are two splits, the last round(n·val_fraction)
    videos (at least one) going to val. Video `index` has the same content whatever the split.
    options: fields of `Options` (frames, width, height, fps, num_references, reference_size,
    crf, gop). Refuses a non-empty out_dir unless overwrite (which replaces only what this
    function writes). Also writes out_dir/synthetic.json describing the generation.
    """
    opts = Options(**options)
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = pathlib.Path(out_dir)
    ours = ["samples", "annotations", "train", "val", "synthetic.json"]
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; choose a new folder or pass overwrite")
        for name in ours:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    num_val = 0 if val_fraction == 0 else max(1, round(num_videos * val_fraction))
    if num_val >= num_videos:
        raise ValueError(f"val_fraction={val_fraction} leaves no training video of {num_videos}")
    splits = {out: range(num_videos)} if num_val == 0 else {
        out / "train": range(num_videos - num_val), out / "val": range(num_videos - num_val,
                                                                       num_videos)}
    for root, indices in splits.items():
        entries = [write_sample(root, sample_scene(seed, i, opts), seed, i) for i in indices]
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "annotations.json").write_text(json.dumps(entries) + "\n")
    meta = {"generator": "jdet.data.synthetic", "version": VERSION, "seed": seed,
            "num_videos": num_videos, "val_fraction": val_fraction,
            "options": dataclasses.asdict(opts),
            "splits": {str(root.relative_to(out)): [f"synth_{i:03d}" for i in indices]
                       for root, indices in splits.items()}}
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write a dataset and print where, how big and how long it took."""
    parser = argparse.ArgumentParser(prog="python -m jdet.data.synthetic",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--num-videos", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=Options.frames)
    parser.add_argument("--size", default=f"{Options.width}x{Options.height}",
                        help="video WIDTHxHEIGHT, even numbers")
    parser.add_argument("--fps", type=int, default=Options.fps)
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="> 0 writes OUT/train and OUT/val instead of one split")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous dataset in --out")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 320x192, got {args.size!r}")
    start = time.perf_counter()
    out = generate(args.out, args.num_videos, args.seed, frames=args.frames, width=width,
                   height=height, fps=args.fps, val_fraction=args.val_fraction,
                   overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {args.num_videos} videos to {out} ({size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - start:.1f} s; check it with: "
          f"python -m jdet.data.zalo validate {out if args.val_fraction == 0 else out / 'train'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
