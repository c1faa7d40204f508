"""Training configuration: `base_config()`, `validate`, `finalize`, and the adapters from the
ConfigDict to the typed settings the library takes.

`base_config()` returns every field a recipe may set. Sections in order (docs/design.md §3):
seed, data, model, loss, optim, train, eval, debug, distributed, then `init` and `resume`.
Durations are in steps. Recipes (`configs/*.py`) start from `base_config()`, change what they
need and return `finalize(config)`, which validates the config (ValueError naming the field)
and locks it so a typo on the command line fails with a suggestion before anything compiles.
`python -m jdet.train` validates again after the command line's overrides.

Adapters, one function per settings type: `episode_config`, `loss_config`, `loss_weights`,
`optim_config`, `distributed_config`, `predict_options`, `temporal_options`.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jdet import distributed
from jdet.data.episodes import EpisodeConfig
from jdet.inference import temporal
from jdet.inference.pipeline import PredictOptions
from jdet.inference.temporal import TemporalOptions
from jdet.losses import TERM_NAMES, LossConfig
from jdet.models.onednn_conv import CHOICES as CONV_CHOICES
from jdet.training.optim import OptimConfig

EVAL_METRICS = ("metrics/st_iou", "metrics/mAP50", "metrics/mAP50-95")


def base_config() -> ml_collections.ConfigDict:
    """Defaults: the original RefDet stage-2 recipe (docs/original.md §3–§4) on synthetic data."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    # "synthetic": generate `data.synthetic` videos into cache_dir/raw on first use;
    # otherwise a raw challenge-layout folder (jdet.data.zalo) to build from.
    c.data.source = "synthetic"
    c.data.cache_dir = ""  # "" = <workdir>/data; holds raw/ (synthetic) and tfds/
    c.data.val_fraction = 0.0
    # Synthetic source only: this many more videos (another seed) generated into
    # cache_dir/val in the challenge layout, for evaluation (eval.samples = "").
    c.data.val_videos = 0
    c.data.synthetic = ml_collections.ConfigDict(
        dict(num_videos=8, frames=80, width=320, height=192, reference_size=256)
    )
    c.data.n_way = 2
    c.data.k_shot = 3
    c.data.q_query = 4
    c.data.query_size = 320
    c.data.support_size = 256
    c.data.max_boxes = 8
    c.data.augment = True
    c.data.mosaic_prob = 0.5
    c.data.negative_ratio = 0.25
    # Share of positive query frames made by pasting the reference photos' object into frames
    # of the same video without it (jdet.data.copy_paste); 0 = off.
    c.data.copy_paste = 0.0
    c.data.episodes_per_epoch = 500
    c.data.worker_count = 0
    c.data.num_threads = 2
    # Batches read and copied to the devices ahead of the step, in a background thread
    # (jdet.training.feed.DevicePrefetch); 0 = read each batch when the step needs it.
    c.data.device_prefetch = 2

    c.model = ml_collections.ConfigDict()
    c.model.yolo_scale = "n"
    c.model.encoder = "dinov3-S/16"
    c.model.frozen_blocks = 6
    c.model.nc_base = 80
    # A prior-initialised learnable bias on the prototype logits (not in the original, whose
    # cls term starts in the thousands without it; jdet.models.heads.PrototypeDetectionHead).
    c.model.proto_logit_bias = False
    c.model.dtype = "float32"
    # Convolution implementation the model traces to (jdet.models.impl.LayerImpl.conv):
    # "auto" | "onednn" | "xla"; "" = the environment variable JDET_CPU_CONV (default "auto":
    # oneDNN on a single CPU device, XLA otherwise).
    c.model.conv = ""

    c.loss = ml_collections.ConfigDict(
        dict(box=7.5, cls=0.5, dfl=0.75, supcon=1.2, cpe=0.6, triplet=0.3)
    )
    c.loss.cfg = ml_collections.ConfigDict(dataclasses.asdict(LossConfig()))

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 0
    c.optim.final_lr_fraction = 0.01
    c.optim.clip_norm = 5.0
    c.optim.group_lr = ml_collections.ConfigDict(
        dict(support_encoder=0.1, backbone=1.0, fusion=2.0, heads=2.0)
    )

    c.train = ml_collections.ConfigDict()
    c.train.total_steps = 75_000  # 150 epochs × 500 episodes (docs/original.md §4)
    c.train.batch_size = 8  # = episodes_per_batch · n_way · q_query
    c.train.log_every_steps = 50
    c.train.ckpt_every_steps = 1000
    c.train.eval_every_steps = 0  # 0: evaluate only at the end (when there is a val set)
    c.train.keep_ckpts = 3

    c.eval = ml_collections.ConfigDict()
    # Challenge-layout folder with annotations to evaluate on; "" = the synthetic val videos
    # (data.val_videos), or no evaluation when there are none.
    c.eval.samples = ""
    c.eval.stride = 1  # every n-th frame of each video
    c.eval.max_frames = 0  # per video, 0 = all
    c.eval.batch_size = 8
    # From each frame's scored boxes to the one box per frame that is reported (ST-IoU):
    # jdet.inference.temporal.TemporalOptions (thresholds, hysteresis, gaps, smoothing).
    c.eval.temporal = ml_collections.ConfigDict(dataclasses.asdict(TemporalOptions()))
    c.eval.iou_threshold = 0.45  # NMS
    c.eval.max_det = 100
    # Tiled inference for small objects (jdet.inference.tiling): crops of `tile` frame pixels
    # overlapping by `tile_overlap`, plus the whole frame with `tile_full`; 0 = off.
    c.eval.tile = 0
    c.eval.tile_overlap = 0.25
    c.eval.tile_full = True
    # Appearance re-scoring (jdet.inference.appearance): each box's score times (its colour
    # similarity to the references / the video's usual level) ** appearance; 0 = off.
    c.eval.appearance = 0.0
    c.eval.best_metric = "metrics/st_iou"  # higher is better; its best weights → workdir/best

    c.debug = ml_collections.ConfigDict()
    c.debug.grad_check_every = 0  # 0: only at step 0; -1: never
    c.debug.check_nans = True  # fetch the skip flag every step; dump non-finite batches
    c.debug.max_bad_steps = 10  # stop after this many consecutive non-finite steps
    # Debugging aid (reproduce the NaN forensics): comma-separated 0-based step numbers, as in
    # nan_dump/step_<n>, whose batch gets a NaN query image, e.g. "3" or "3,7"; "" = none.
    c.debug.inject_nan_steps = ""

    # Multi-process runs (jdet.distributed): one process per host or GPU, same command on all.
    # "auto" joins when a coordinator is named here or in JAX_COORDINATOR_ADDRESS, or under a
    # SLURM / Open MPI job of several tasks; see docs/distributed.md.
    c.distributed = ml_collections.ConfigDict(dataclasses.asdict(distributed.DistributedConfig()))

    c.init = ""  # weights folder (scripts/convert_weights.py) or checkpoint: params only
    c.resume = ""  # a run directory or checkpoint folder to continue from (full state)
    return c


def episodes_per_batch(config: ml_collections.ConfigDict) -> int:
    """train.batch_size // (n_way · q_query), after `validate`."""
    return config.train.batch_size // (config.data.n_way * config.data.q_query)


def validate(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the first invalid field."""
    d, t = config.data, config.train
    per_episode = d.n_way * d.q_query
    if t.batch_size < 1 or t.batch_size % per_episode:
        raise ValueError(
            f"train.batch_size={t.batch_size} must be a positive multiple of "
            f"data.n_way·data.q_query = {per_episode} (episodes_per_batch · N · Q)"
        )
    for name in ("total_steps", "log_every_steps", "ckpt_every_steps", "keep_ckpts"):
        if getattr(t, name) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.eval_every_steps < 0:
        raise ValueError(f"train.eval_every_steps must be >= 0, got {t.eval_every_steps}")
    for name in TERM_NAMES:
        if config.loss[name] < 0:
            raise ValueError(f"loss.{name} must be >= 0, got {config.loss[name]}")
    if config.debug.grad_check_every < -1:
        raise ValueError(
            "debug.grad_check_every must be >= 0 (0: at step 0 only) or -1 (never), got "
            f"{config.debug.grad_check_every}"
        )
    if config.debug.max_bad_steps < 1:
        raise ValueError(f"debug.max_bad_steps must be >= 1, got {config.debug.max_bad_steps}")
    nan_steps = config.debug.inject_nan_steps
    if nan_steps and not all(s.strip().isdecimal() for s in nan_steps.split(",")):
        raise ValueError(
            "debug.inject_nan_steps must be comma-separated 0-based step numbers such as "
            f'"3,7" (or "" for none), got {nan_steps!r}'
        )
    e = config.eval
    if e.stride < 1 or e.batch_size < 1 or e.max_frames < 0 or e.max_det < 1:
        raise ValueError(
            "eval.stride, eval.batch_size, eval.max_det must be >= 1, eval.max_frames >= 0"
        )
    if not 0.0 <= e.iou_threshold <= 1.0:
        raise ValueError(f"eval.iou_threshold must be in [0, 1], got {e.iou_threshold}")
    temporal_options(config)
    try:
        predict_options(config)
    except ValueError as err:
        raise ValueError(f"eval.{err}") from None
    if e.best_metric not in EVAL_METRICS:
        raise ValueError(f"eval.best_metric must be one of {EVAL_METRICS}, got {e.best_metric!r}")
    if d.val_videos < 0:
        raise ValueError(f"data.val_videos must be >= 0, got {d.val_videos}")
    if not d.source:
        raise ValueError('data.source must be "synthetic" or a raw dataset folder')
    if config.model.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype must be float32 or bfloat16, got {config.model.dtype!r}")
    if config.model.conv not in ("", *CONV_CHOICES):
        raise ValueError(
            f'model.conv must be one of {CONV_CHOICES} or "" (JDET_CPU_CONV), got '
            f"{config.model.conv!r}"
        )
    if d.device_prefetch < 0:
        raise ValueError(f"data.device_prefetch must be >= 0, got {d.device_prefetch}")
    distributed_config(config).validate()
    if config.init and config.resume:
        raise ValueError("set at most one of init (params only) and resume (full state)")


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validate and lock (unknown fields then fail with a suggestion)."""
    validate(config)
    config.lock()
    return config


# ------------------------------------------------------------------------------ adapters


def episode_config(config: ml_collections.ConfigDict) -> EpisodeConfig:
    """The episodic sampler's settings (`data` section; batches of `train.batch_size`)."""
    d = config.data
    per_episode = d.n_way * d.q_query
    if config.train.batch_size % per_episode:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be a multiple of "
            f"data.n_way·data.q_query = {per_episode}"
        )
    return EpisodeConfig(
        n_way=d.n_way,
        k_shot=d.k_shot,
        q_query=d.q_query,
        query_size=d.query_size,
        support_size=d.support_size,
        max_boxes=d.max_boxes,
        augment=d.augment,
        mosaic_prob=d.mosaic_prob,
        negative_ratio=d.negative_ratio,
        copy_paste=d.get("copy_paste", 0.0),
        episodes_per_epoch=d.episodes_per_epoch,
        episodes_per_batch=config.train.batch_size // per_episode,
    )


def loss_config(config: ml_collections.ConfigDict) -> LossConfig:
    return LossConfig(**config.loss.cfg.to_dict())


def loss_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    return {name: float(config.loss[name]) for name in TERM_NAMES}


def optim_config(config: ml_collections.ConfigDict) -> OptimConfig:
    o = config.optim
    return OptimConfig(
        lr=o.lr,
        weight_decay=o.weight_decay,
        warmup_steps=o.warmup_steps,
        total_steps=config.train.total_steps,
        final_lr_fraction=o.final_lr_fraction,
        clip_norm=o.clip_norm,
        group_lr=o.group_lr.to_dict(),
        max_consecutive_nonfinite=config.debug.max_bad_steps,
    )


def distributed_config(config: ml_collections.ConfigDict) -> distributed.DistributedConfig:
    return distributed.DistributedConfig.from_config(config.get("distributed"))


def predict_options(config: ml_collections.ConfigDict) -> PredictOptions:
    """The `eval` section → the predictor's options (the trainer's evaluation, jdet.evaluate)."""
    e = config.eval
    return PredictOptions(
        iou_threshold=e.iou_threshold,
        max_det=e.max_det,
        batch_size=e.batch_size,
        tile=e.get("tile", 0),
        tile_overlap=e.get("tile_overlap", 0.25),
        tile_full=e.get("tile_full", True),
        appearance=e.get("appearance", 0.0),
    )


def temporal_options(config: ml_collections.ConfigDict) -> TemporalOptions:
    """`eval.temporal` → the temporal decisions (`temporal.from_eval_config`)."""
    return temporal.from_eval_config(config.eval)
