"""The benchmarks' one train-step builder: jdet's jitted, donated train steps on random data.

  "yolo":   `YOLOv8("n", num_classes=1)`'s raw head outputs flattened to what `loss_terms` reads
            (dist [B, A, 4, 16], cls [B, A, 1], anchors, strides) with
            `LossConfig.ultralytics()` (16 bins averaged over sides, 1 − CIoU, TAL top-10) and
            ultralytics' default gains (box 7.5 / cls 0.5 / dfl 1.5), `boxes` GT boxes per
            image (`gt_boxes`, shared with the ultralytics step); plain `optax.adamw` with
            torch.optim.AdamW's defaults (lr 1e-3, weight decay 0.01 on every parameter).
  "refdet": RefDet (YOLOv8n + DINOv3 ViT-S/16), 2-way 3-shot, `batch` query images (2 ways ×
            batch // 2 queries) at image², 3 references per way at 256², one GT box per query,
            the 6 stage-2 terms, `make_optimizer` (grouped AdamW, clipping, apply_if_finite);
            `episodes` = RefDet's support_groups (episodes per batch sharing a support set,
            0: one per query).

`build_config_step("configs/quickstart.py")`: the train step a training config describes, exactly
as `jdet.train` builds it (`build_model`, `refdet_param_groups`, `make_optimizer`, the config's
loss weights and loss settings), on a random batch of the config's shapes (one GT box per query).

All are `jdet.training.steps.train_step`, jitted with the state donated; the models' `impl`
field (`jdet.models.impl.LayerImpl`) comes from `conv` and `layers`. jax and jdet are imported
when a step is built (this module is imported by processes that only run torch).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

MODELS = ("yolo", "refdet")
YOLO_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # ultralytics' default hyperparameters
REFDET_WEIGHTS = {"box": 7.5, "cls": 0.5, "dfl": 0.75, "supcon": 1.2, "cpe": 0.6, "triplet": 0.3}


def gt_boxes(batch: int, image: int, num_boxes: int) -> np.ndarray:
    """[B, M, 4] f32 xyxy pixel boxes, fixed seed (the same for jdet and ultralytics)."""
    rng = np.random.default_rng(0)
    wh = rng.uniform(16, image / 3, (batch, num_boxes, 2))
    xy = rng.uniform(0, 1, (batch, num_boxes, 2)) * (image - wh)
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


@dataclasses.dataclass
class TrainStep:
    """A built step and its inputs; `run()` takes one step (the state is donated, so it is
    replaced by the new one)."""

    step: Callable  # jit(train_step, donate_argnums=0) (or its compiled executable)
    state: Any
    batch: dict
    rng: Any
    images: int  # query images per step
    description: str
    first_metrics: dict | None = None  # of the first `run()`
    metrics: dict | None = None  # of the latest `run()`
    compile_s: float | None = None  # when compiled ahead of time (`benchmarks.profiling`)
    loss_weights: dict | None = None  # what the step was built with (its loss)
    loss_cfg: Any = None

    def lower(self):
        return self.step.lower(self.state, self.batch, self.rng)

    def run(self) -> dict:
        self.state, self.metrics = self.step(self.state, self.batch, self.rng)
        if self.first_metrics is None:
            self.first_metrics = self.metrics
        return self.metrics


def build_train_step(
    model: str = "yolo",
    *,
    batch: int = 8,
    image: int = 320,
    boxes: int = 4,
    episodes: int = 1,
    conv: str | None = None,
    layers: str = "fast",
) -> TrainStep:
    """The `model` ("yolo" or "refdet") train step at batch × image² (see the module docstring).

    conv: the convolution backend ("auto", "onednn", "xla"; None: the environment's
    JDET_CPU_CONV). FLOP counts need "xla": XLA cannot count inside oneDNN's custom calls.
    layers: "fast" (jdet's custom-gradient layers, the default), "plain" (Flax's own modules)
    or "fast-PART-…" (fast with those `jdet.models.impl.FAST_PARTS` turned off).
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    impl = layer_impl(conv, layers)
    if model == "yolo":
        return _yolo(batch, image, boxes, impl)
    return _refdet(batch, image, episodes, impl)


def build_config_step(
    config_file: str,
    arg: str | None = None,
    *,
    overrides: dict | None = None,
    model_fields: dict | None = None,
    box: tuple[float, float, float, float] | None = None,
    seed: int = 0,
) -> TrainStep:
    """The train step of the training config in `config_file` (`get_config(arg)`, then
    `overrides`: {"data.query_size": 640, …}), the way `jdet.training.loop` builds it, on a
    random batch of its shapes: train.batch_size queries at data.query_size², data.n_way ×
    data.k_shot references at data.support_size², one GT box per query labelled with its
    way (`box`: its xyxy pixels). `model_fields`: RefDet fields that are not config fields
    (e.g. train_projections)."""
    import importlib.util
    import pathlib

    import jax
    import jax.numpy as jnp

    from jdet import config as cfg
    from jdet.models import build_model
    from jdet.models.refdet import refdet_param_groups
    from jdet.training.optim import make_optimizer
    from jdet.training.steps import create_train_state, train_step

    path = pathlib.Path(config_file)
    spec = importlib.util.spec_from_file_location(f"_bench_config_{path.stem}", path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"no config file {config_file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    for key, value in (overrides or {}).items():
        section, _, name = key.rpartition(".")
        target = config
        for part in section.split(".") if section else ():
            target = target[part]
        if name not in target:
            raise KeyError(f"{config_file} has no config field {key}")
        target[name] = value
    d, bsz = config.data, config.train.batch_size
    n, k, s, q = d.n_way, d.k_shot, d.support_size, d.query_size
    rng = np.random.default_rng(seed)
    way = np.arange(bsz) // (bsz // n) % n if bsz >= n else np.zeros(bsz, int)
    box = np.array(box or np.array([0.15, 0.2, 0.45, 0.6]) * q, np.float32)
    batch = {
        "query": jnp.asarray(rng.random((bsz, q, q, 3), np.float32)),
        "support": jnp.asarray(rng.random((bsz, n, k, s, s, 3), np.float32)),
        "support_mask": jnp.ones((bsz, n), bool),
        "boxes": jnp.asarray(np.tile(box, (bsz, 1, 1))),
        "labels": jnp.asarray(way[:, None].astype(np.int32)),
        "box_mask": jnp.ones((bsz, 1), bool),
        "class_ids": jnp.tile(jnp.arange(n, dtype=jnp.int32), (bsz, 1)),
        "query_way": jnp.asarray(way.astype(np.int32)),
    }
    model = build_model(config).clone(**(model_fields or {}))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))["params"]
    groups = refdet_param_groups(params, config.model.frozen_blocks)
    tx = make_optimizer(cfg.optim_config(config), params, groups)
    state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), batch)
    weights, loss_cfg = cfg.loss_weights(config), cfg.loss_config(config)
    step = functools.partial(train_step, loss_weights=weights, loss_cfg=loss_cfg)
    m = config.model
    return TrainStep(
        step=jax.jit(step, donate_argnums=0),
        state=state,
        batch=batch,
        rng=jax.random.PRNGKey(1),
        images=bsz,
        description=(
            f"{config_file}{':' + arg if arg else ''}: RefDet (YOLOv8 {m.yolo_scale} + "
            f"{m.encoder}), {n}-way {k}-shot, {bsz} queries at {q}², references at {s}², "
            f"support_groups={model.support_groups}, nc_base={m.nc_base}"
        ),
        loss_weights=weights,
        loss_cfg=loss_cfg,
    )


def layer_impl(conv: str | None = None, layers: str = "fast"):
    """The models' `LayerImpl` for a convolution backend and a layer variant (see
    `build_train_step`)."""
    from jdet.models.impl import LayerImpl

    kind, *off = layers.split("-")
    if kind not in ("fast", "plain") or (off and kind != "fast"):
        raise ValueError(f"layers must be 'plain', 'fast' or 'fast-PART-…', got {layers!r}")
    return LayerImpl(conv=conv, fast=kind == "fast", fast_off=tuple(off))


def _yolo(batch_size: int, image: int, num_boxes: int, impl) -> TrainStep:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jdet.boxes import make_anchors
    from jdet.losses import LossConfig
    from jdet.models.yolo import STRIDES, YOLOv8
    from jdet.training.steps import create_train_state, train_step

    class QueryDetector(nn.Module):
        """YOLOv8 raw head maps → the outputs dict `loss_terms` reads."""

        @nn.compact
        def __call__(self, batch, train: bool = False):
            yolo = YOLOv8("n", num_classes=1, impl=impl, name="yolo")
            maps = yolo(batch["query"], train)
            bsz, bins = maps[0].shape[0], yolo.reg_max
            flat = jnp.concatenate([m.reshape(bsz, -1, m.shape[-1]) for m in maps], axis=1)
            anchors, strides = make_anchors([m.shape[1:3] for m in maps], STRIDES)
            return {
                "dist": flat[..., : 4 * bins].reshape(bsz, -1, 4, bins),
                "cls": flat[..., 4 * bins :],
                "anchors": anchors,
                "strides": strides,
            }

    boxes = gt_boxes(batch_size, image, num_boxes)
    batch = {
        "query": jax.random.uniform(jax.random.PRNGKey(0), (batch_size, image, image, 3)),
        "boxes": jnp.asarray(boxes),
        "labels": jnp.zeros(boxes.shape[:2], jnp.int32),
        "box_mask": jnp.ones(boxes.shape[:2], bool),
    }
    tx = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    state = create_train_state(QueryDetector(), tx, jax.random.PRNGKey(0), batch)
    step = functools.partial(train_step, loss_weights=YOLO_GAINS, loss_cfg=LossConfig.ultralytics())
    return TrainStep(
        step=jax.jit(step, donate_argnums=0),
        state=state,
        batch=batch,
        rng=jax.random.PRNGKey(1),
        images=batch_size,
        description=f"YOLOv8n, 1 class, detection loss, AdamW; batch {batch_size} at {image}²",
    )


def _refdet(batch_size: int, image: int, episodes: int, impl) -> TrainStep:
    import jax
    import jax.numpy as jnp

    from jdet.models.refdet import RefDet, refdet_param_groups
    from jdet.training.optim import OptimConfig, make_optimizer
    from jdet.training.steps import create_train_state, train_step

    n, q, k = 2, batch_size // 2, 3
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    batch = {
        "query": jax.random.uniform(keys[0], (n * q, image, image, 3)),
        "support": jax.random.uniform(keys[1], (n * q, n, k, 256, 256, 3)),
        "support_mask": jnp.ones((n * q, n), bool),
        "boxes": jnp.tile(jnp.array([[[40.0, 50.0, 120.0, 160.0]]]), (n * q, 1, 1)),
        "labels": jnp.zeros((n * q, 1), jnp.int32),
        "box_mask": jnp.ones((n * q, 1), bool),
    }
    model = RefDet(support_groups=episodes, impl=impl)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))["params"]
    tx = make_optimizer(OptimConfig(total_steps=1000), params, refdet_param_groups(params, 6))
    state = create_train_state(model, tx, jax.random.PRNGKey(0), batch)
    step = functools.partial(train_step, loss_weights=REFDET_WEIGHTS)
    return TrainStep(
        loss_weights=REFDET_WEIGHTS,
        step=jax.jit(step, donate_argnums=0),
        state=state,
        batch=batch,
        rng=jax.random.PRNGKey(1),
        images=n * q,
        description=(
            f"RefDet (YOLOv8n + DINOv3 ViT-S/16), {n}-way {k}-shot, {n * q} queries at {image}², "
            f"support_groups={episodes}, 6 terms, AdamW"
        ),
    )
