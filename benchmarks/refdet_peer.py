"""The PyTorch peer of jdet's RefDet train step: the ORIGINAL YOLOv8n-RefDet stage-2 step, timed.

Reference: it-dainb/zalo_ai_2025 at commit 075f362, run from its own source files (an extracted
copy, ``--zalo-src DIR`` holding ``src/``); nothing of theirs is copied into jdet. Extract with

    mkdir -p /tmp/zalo && git --git-dir=/work/.mirror/it-dainb+zalo_ai_2025/repo archive 075f362 \\
        src | tar -x -C /tmp/zalo

and run (from the jdet repository root, in the ``convert`` environment plus ``pip install
timm``, which the original's encoder needs)::

    python -m benchmarks.refdet_peer --zalo-src /tmp/zalo --image 320 --repeats 3 [--small] \\
        [--threads 2] [--parts forward,forward_backward,step,triplet_step] [--box X1,Y1,X2,Y2]

It prints one JSON dict (times in ms, peak RSS in MiB). Python API: `original_step` (the built
step: `forward`, `forward_backward`, `step`, `triplet_step`, `description`, `loss()`) and
`measure`.

What is built, and from which of the original's functions (paths at 075f362):

* model: ``src/models/yolov8n_refdet.py`` ``YOLOv8nRefDet`` with ``train.py``
  ``create_model``'s arguments (``nc_base=0``: no base head; DINOv3
  ``vit_small_patch16_dinov3.lvd1689m`` with ``freeze_dinov3`` and its first 6 blocks frozen;
  YOLO not frozen). It holds ``dino_encoder.py`` ``DINOSupportEncoder``, ``yolov8_backbone.py``
  ``YOLOv8BackboneExtractor`` (taps at layers 2/15/18/21 = P2..P5, 32/64/128/256 channels; the
  whole ultralytics DetectionModel, Detect head included, runs on every query),
  ``psalm_fusion.py`` ``PSALMFusion`` (P2..P5 → 128/256/512/512, 4 heads) and ``dual_head.py``
  ``DualDetectionHead`` (prototype head only, reg_max 16 → 17 bins, temperature 10).
* batch: what ``src/datasets/collate.py`` ``RefDetCollator`` returns for one episode of
  ``EpisodicBatchSampler`` (``n_way`` ways × ``batch // n_way`` queries, grouped by way):
  ``query_images`` [B, 3, I, I], ``support_images`` [N, K, 3, S, S], one GT box per query
  (``[40, 50, 120, 160]`` · I/320 pixels, xyxy) whose class is the query's way, ``class_ids``
  [B] (episodic way of each query) and ``num_classes`` = N. Images are ``torch.rand``.
* forward + loss: ``src/training/trainer.py`` ``RefDetTrainer._forward_detection_step``, called
  unbound on a small stand-in for the trainer (``model``, ``loss_fn``, ``debug_mode=False``):
  ``set_reference_images`` (the N·K references encoded one image at a time, under
  ``torch.no_grad``, averaged per way), ``model(query, mode='dual', use_cache=True,
  class_ids=...)``, ``src/training/loss_utils.py`` ``prepare_loss_inputs`` (centre-in-box
  assignment on all four scales, CPE features by ``roi_align`` on the fused P4 map) and
  ``src/losses/combined_loss.py`` ``ReferenceBasedDetectionLoss(stage=2, ...)``.
* loss weights, optimiser and clipping: ``train_stage_2.sh``'s arguments — bbox 7.5, cls 0.5,
  dfl 0.75, supcon 1.2, cpe 0.6, triplet 0.3, ``--use_batch_hard_triplet`` (batch-hard triplet,
  cosine, margin 0.3, on the detection batch's pooled P4 query features with ``class_ids`` as
  labels: no extra images), lr 1e-4, weight decay 0.05, gradient accumulation 1, clip 5.0 —
  and ``train.py`` ``create_optimizer`` (AdamW β 0.9/0.999, eps 1e-8, groups: support encoder
  0.1×, YOLO 1×, fusion 2×, head 2×) and ``create_scheduler`` (cosine to 0.01× over 150 × 500
  steps, stepped after every optimiser step).
* step: as ``RefDetTrainer.train_epoch`` runs a detection batch without mixed precision:
  forward + loss, ``loss.backward()``, ``clip_grad_norm_(model.parameters(), 5.0)``,
  ``optimizer.step()``, ``optimizer.zero_grad()``, ``scheduler.step()``.
  ``trainer_checks=True`` adds the trainer's per-step NaN/Inf test and ``grad.norm().item()``
  of every parameter gradient (done by the original on every batch).
* ``triplet_step``: stage 2 also draws 30 % of its batches from ``TripletCollator``
  (``--use_triplet --triplet_ratio 0.3 --triplet_batch_size 8``): 8 anchors at S² through the
  support encoder WITH gradients (blocks 7–12, final norm and ``triplet_proj``), 8 positive and
  8 negative frames at I² through the YOLO branch, and the batch-hard triplet loss alone
  (unweighted), via ``RefDetTrainer._forward_triplet_step``; then clip and AdamW as above.

Stand-ins (nothing is downloaded):

* YOLO starts from ``yolov8n.yaml`` (random init, 80 classes as the COCO checkpoint) instead of
  ``./models/yolov8-n.pt``.
* ``timm.create_model`` is wrapped while the model is built: ``pretrained=False`` (random
  DINOv3) and ``img_size`` = the support size; for ``small`` also the tiny width/depth.
* ``torchvision`` (imported by ``dual_head.py``; ``roi_align`` for CPE) is stubbed only when it
  does not import, and then the original's own fallback (pooled query features) replaces
  ``roi_align`` — ``description`` says so.
* ``src.augmentations`` (needs albumentations; the trainer imports it for a type hint only) is
  stubbed when it does not import.
* ``amp=True`` runs forward + loss under ``torch.autocast("cpu")`` (bfloat16), as the trainer's
  ``--mixed_precision`` does on a machine without CUDA (its ``GradScaler`` then disables
  itself). The default is float32, as jdet's step.

``small=True``: the same code path at the sizes of jdet's ``configs/quickstart.py`` — the
ultralytics YOLOv8 yaml at depth 0.33 / width 0.125 (jdet's scale "t2": taps 16/32/64/128), a
DINOv3 ViT of width 32, depth 2, 2 heads, patch 4 (jdet's "dinov3-tiny"), 1 frozen block,
prototype widths = the taps, fusion out 128/256/512/512, 128² queries and 64² references.
``YOLOv8nRefDet.__init__`` hardcodes the YOLOv8n widths, so this variant assembles the same
four original modules with those widths (``YOLOv8nRefDet.forward`` and everything after it are
unchanged). Its ``triplet_step`` is unavailable: the original's triplet batches compare the
pooled YOLO P5 feature with ``triplet_proj``'s hardcoded 256 outputs (YOLOv8n's P5 width).

Cost of the original's loss (what dominates its step on CPU): every anchor whose centre lies
inside the GT box, on all four scales, is a positive, and every positive is a CPE proposal.
``src/losses/cpe_loss.py`` ``SimplifiedCPELoss`` loops over the P proposals in Python; each
iteration indexes a row of the P × P similarity matrix, whose backward materialises a full
P × P gradient, so the backward is O(P³) (time) with P × P temporaries; ``roi_align``'s
backward on the fused P4 map (512 channels, all proposals on image 0) is O(P). With the
default box P = 960 (small), 6,008 (320²) and 23,536 (640²): a 320² step took 21–24 minutes
on one (shared) core, two thirds of it system time (glibc serves each 144 MB gradient with a
fresh mmap), and a 640² step would take many hours (2.2 GB per temporary); time 640² with
``--parts forward`` or with a smaller ``--box``.

Threads: on a machine shared with other busy processes, torch's OpenMP pool with more threads
than free cores slows every op by scheduler time slices (seen: 2 threads 70× slower than 1);
compare rows measured under the same load.

This module imports neither jax nor jdet; ``benchmarks.timing`` is plain Python.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import math
import pathlib
import resource
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.timing import time_call

GT_BOX_320 = (40.0, 50.0, 120.0, 160.0)  # xyxy pixels at 320², scaled with the image
STAGE2_WEIGHTS = {  # train_stage_2.sh (combined_loss.py's class defaults: dfl 1.5, supcon 1.0,
    "bbox_weight": 7.5,  # cpe 0.5, triplet 0.2; train.py's argparse defaults are the same)
    "cls_weight": 0.5,
    "dfl_weight": 0.75,
    "supcon_weight": 1.2,
    "cpe_weight": 0.6,
    "triplet_weight": 0.3,
}
STAGE2_LR = 1e-4
STAGE2_WEIGHT_DECAY = 0.05
STAGE2_CLIP = 5.0  # train_stage_2.sh --gradient_clip_norm (train.py's default: 1.0)
GROUP_LR = {"support_encoder": 0.1, "backbone": 1.0, "scs_fusion": 2.0, "detection_head": 2.0}
SCHEDULE_STEPS = 150 * 500  # epochs × episodes per epoch (train_stage_2.sh)
DINOV3_NAME = "vit_small_patch16_dinov3.lvd1689m"
FUSION_OUT = [128, 256, 512, 512]
SMALL = dict(  # jdet configs/quickstart.py: YOLOv8 "t2", "dinov3-tiny", frozen_blocks 1
    yolo_multiples=(0.33, 0.125, 1024),
    vit=dict(embed_dim=32, depth=2, num_heads=2, patch_size=4),
    frozen_blocks=1,
    image=128,
    support=64,
)


@dataclasses.dataclass
class PeerStep:
    """The original's stage-2 step, built; every callable returns the loss it computed (float;
    `forward` returns None)."""

    forward: Callable[[], None]  # train-mode forward (references + query), under no_grad
    forward_backward: Callable[[], float]  # zero_grad, forward, stage-2 loss, backward
    step: Callable[[], float]  # + clip 5.0, AdamW (stage-2 groups), cosine scheduler
    triplet_step: Callable[[], float]  # one optimiser step on a triplet batch (30 % of stage 2)
    description: str
    image: int = 0
    support: int = 0
    model: Any = None
    assigned_anchors: int = 0  # positives of the centre assignment = CPE proposals (P)
    last_loss: float | None = None
    last_terms: dict | None = None

    def loss(self) -> float | None:
        """The total loss of the last call that computed one."""
        return self.last_loss


# ---------------------------------------------------------------------------------------------
# Importing the original
# ---------------------------------------------------------------------------------------------


def _check_src(zalo_src: str | pathlib.Path) -> pathlib.Path:
    root = pathlib.Path(zalo_src).resolve()
    if not (root / "src" / "models" / "yolov8n_refdet.py").exists():
        raise FileNotFoundError(f"no src/models/yolov8n_refdet.py under {root}")
    return root


def _stub_module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def load_original(zalo_src: str | pathlib.Path) -> dict[str, Any]:
    """Import the original's model, loss and trainer modules from ``zalo_src/src`` (as the
    package ``src``, which their absolute imports need). Returns the modules and the stand-ins
    that were needed (key "stubs")."""
    root = _check_src(zalo_src)
    loaded = sys.modules.get("src.models.yolov8n_refdet")
    if loaded is not None:
        if not pathlib.Path(loaded.__file__).resolve().is_relative_to(root):
            raise RuntimeError(f"a package 'src' from {loaded.__file__} is already imported")
    stubs = []
    try:
        import torchvision  # noqa: F401
        import torchvision.ops  # noqa: F401
    except (ImportError, RuntimeError):  # dual_head.py imports it; CPE's roi_align then fails
        _stub_module("torchvision")
        stubs.append("torchvision stubbed: CPE uses the original's fallback (pooled features)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        importlib.import_module("src.augmentations.augmentation_config")
    except ImportError:  # albumentations missing; the trainer only uses the class in a hint
        for name in [m for m in sys.modules if m.startswith("src.augmentations")]:
            del sys.modules[name]
        pkg = _stub_module("src.augmentations", __path__=[])
        cfg = _stub_module(
            "src.augmentations.augmentation_config",
            AugmentationConfig=type("AugmentationConfig", (), {}),
        )
        pkg.augmentation_config = cfg
        stubs.append("src.augmentations stubbed (type hint only)")
    mods = {
        name: importlib.import_module(f"src.{name}")
        for name in (
            "models.yolov8n_refdet",
            "models.dino_encoder",
            "models.yolov8_backbone",
            "models.psalm_fusion",
            "models.dual_head",
            "losses.combined_loss",
            "training.loss_utils",
            "training.trainer",
        )
    }
    mods["stubs"] = stubs
    return mods


@contextlib.contextmanager
def _offline_timm(img_size: int, overrides: dict[str, Any]) -> Iterator[None]:
    """While the model is built: timm.create_model without pretrained weights, at img_size,
    with `overrides` (ViT width/depth for the small variant)."""
    import timm

    original = timm.create_model

    def create_model(name: str, pretrained: bool = False, **kwargs: Any):
        kwargs.update(img_size=img_size, **overrides)
        return original(name, pretrained=False, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


def _yolo_yaml(tmp: pathlib.Path, multiples: tuple[float, float, int] | None) -> str:
    """The ultralytics model yaml: "yolov8n.yaml", or yolov8.yaml's layers at other
    (depth, width, max channels) multiples written to `tmp`."""
    if multiples is None:
        return "yolov8n.yaml"
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = dict(yaml_model_load("yolov8n.yaml"))
    for key in ("scales", "scale", "yaml_file"):
        cfg.pop(key, None)
    cfg["depth_multiple"], cfg["width_multiple"], cfg["max_channels"] = multiples
    path = tmp / "refdet-peer-yolov8-small.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The original prints a summary per module while it builds."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def build_model(mods: dict[str, Any], *, support: int, small: bool) -> Any:
    """YOLOv8nRefDet as train.py's create_model builds it (random weights); `small`: the same
    modules at jdet's quickstart widths (see the module docstring)."""
    refdet = mods["models.yolov8n_refdet"]
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        tmp = pathlib.Path(tmp)
        if not small:
            with _offline_timm(support, {}):
                return refdet.YOLOv8nRefDet(
                    yolo_weights=_yolo_yaml(tmp, None),
                    nc_base=0,
                    dinov3_model=DINOV3_NAME,
                    freeze_yolo=False,
                    freeze_dinov3=True,
                    freeze_dinov3_layers=6,
                )
        import torch

        model = refdet.YOLOv8nRefDet.__new__(refdet.YOLOv8nRefDet)
        torch.nn.Module.__init__(model)
        model.nc_base, model.conf_thres, model.iou_thres = 0, 0.25, 0.45
        model._cached_support_features = None
        backbone = mods["models.yolov8_backbone"].YOLOv8BackboneExtractor(
            weights_path=_yolo_yaml(tmp, SMALL["yolo_multiples"]),
            extract_scales=["p2", "p3", "p4", "p5"],
            freeze_backbone=False,
        )
        taps = _tap_channels(backbone)
        with _offline_timm(support, SMALL["vit"]):
            model.support_encoder = mods["models.dino_encoder"].DINOSupportEncoder(
                model_name=DINOV3_NAME,
                output_dims=taps,
                freeze_backbone=True,
                freeze_layers=SMALL["frozen_blocks"],
                input_size=support,
            )
        model.backbone = backbone
        model.scs_fusion = mods["models.psalm_fusion"].PSALMFusion(
            query_channels=taps, support_channels=taps, out_channels=FUSION_OUT, num_heads=4
        )
        model.detection_head = mods["models.dual_head"].DualDetectionHead(
            nc_base=0, ch=FUSION_OUT, proto_dims=taps, temperature=10.0
        )
        return model


def _tap_channels(backbone: Any) -> list[int]:
    """Output channels of the hooked C2f layers 2, 15, 18, 21 (P2..P5)."""
    return [int(backbone.model.model[i].cv2.conv.out_channels) for i in (2, 15, 18, 21)]


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


def _detection_batch(
    image: int, support: int, n_way: int, k_shot: int, batch: int, gen, box=None
) -> dict:
    """One episode as RefDetCollator returns it (queries grouped by way, way ids 0..N-1)."""
    import torch

    if batch % n_way:
        raise ValueError(f"batch {batch} is not n_way ({n_way}) × queries per way")
    ways = torch.arange(n_way).repeat_interleave(batch // n_way)
    box = (
        torch.tensor([GT_BOX_320]) * (image / 320)
        if box is None
        else torch.tensor([box], dtype=torch.float32)
    )
    return {
        "query_images": torch.rand(batch, 3, image, image, generator=gen),
        "support_images": torch.rand(n_way, k_shot, 3, support, support, generator=gen),
        "target_bboxes": [box.clone() for _ in range(batch)],
        "target_classes": [torch.tensor([int(w)]) for w in ways],
        "class_ids": ways,
        "num_classes": n_way,
        "batch_type": "detection",
    }


def _triplet_batch(image: int, support: int, n_way: int, size: int, gen) -> dict:
    """A TripletCollator batch: anchors (references), positives and negatives (frames)."""
    import torch

    return {
        "anchor_images": torch.rand(size, 3, support, support, generator=gen),
        "positive_images": torch.rand(size, 3, image, image, generator=gen),
        "negative_images": torch.rand(size, 3, image, image, generator=gen),
        "class_ids": torch.arange(size) % n_way,
        "batch_type": "triplet",
    }


def _param_groups(model: Any) -> list[dict]:
    """train.py create_optimizer's groups (frozen parameters included, as there)."""
    return [
        {"params": getattr(model, name).parameters(), "lr": STAGE2_LR * mult, "name": name}
        for name, mult in GROUP_LR.items()
    ]


def original_step(
    zalo_src: str,
    *,
    image: int = 320,
    support: int = 256,
    n_way: int = 2,
    k_shot: int = 3,
    batch: int = 8,
    small: bool = False,
    seed: int = 0,
    amp: bool = False,
    trainer_checks: bool = False,
    triplet_batch: int = 8,
    box: tuple[float, float, float, float] | None = None,
) -> PeerStep:
    """The original's stage-2 detection step at batch × image² (see the module docstring).

    small: jdet's quickstart sizes (YOLOv8 "t2", DINOv3 tiny); `image` and `support` then
    default to 128 and 64 unless given other values than the full-size defaults.
    amp: bfloat16 autocast around forward + loss (the trainer's --mixed_precision on CPU).
    trainer_checks: the trainer's per-parameter NaN/Inf and gradient-norm pass on every step.
    box: the GT box of every query, xyxy pixels at `image` (default [40, 50, 120, 160] ·
      image/320). Its area sets the original's loss cost: every anchor whose centre lies in it
      (on all four scales) is a positive, and CPE costs O(positives³) (see `measure`).
    """
    import torch

    if small:
        image = SMALL["image"] if image == 320 else image
        support = SMALL["support"] if support == 256 else support
    if image % 32:
        raise ValueError(f"image must be a multiple of 32, got {image}")
    mods = load_original(zalo_src)
    trainer_cls = mods["training.trainer"].RefDetTrainer
    torch.manual_seed(seed)
    model = build_model(mods, support=support, small=small)
    model.train()
    with _quiet():
        loss_fn = mods["losses.combined_loss"].ReferenceBasedDetectionLoss(
            stage=2, use_batch_hard_triplet=True, **STAGE2_WEIGHTS
        )
    loss_fn.train()
    optimizer = torch.optim.AdamW(
        _param_groups(model),
        lr=STAGE2_LR,
        weight_decay=STAGE2_WEIGHT_DECAY,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=SCHEDULE_STEPS, eta_min=STAGE2_LR * 0.01
    )
    trainer = types.SimpleNamespace(model=model, loss_fn=loss_fn, debug_mode=False)
    gen = torch.Generator().manual_seed(seed)
    det = _detection_batch(image, support, n_way, k_shot, batch, gen, box)
    trip = _triplet_batch(image, support, n_way, triplet_batch, gen)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)

    peer = PeerStep(None, None, None, None, "", image, support, model)  # type: ignore[arg-type]

    def forward() -> None:
        with torch.no_grad(), autocast():
            support_images = det["support_images"]
            n, k = support_images.shape[:2]
            model.set_reference_images(
                support_images.reshape(n * k, *support_images.shape[2:]),
                average_prototypes=True,
                n_way=n,
                n_support=k,
            )
            model(
                query_image=det["query_images"],
                mode="dual",
                use_cache=True,
                class_ids=det["class_ids"],
            )

    def loss_and_backward(fwd: Callable[[Any, dict], tuple], data: dict) -> float:
        optimizer.zero_grad()
        with autocast():
            loss, terms = fwd(trainer, data)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} ({terms})")
        loss.backward()  # gradient accumulation 1: loss / 1
        peer.last_loss, peer.last_terms = float(loss.item()), terms
        return peer.last_loss

    def finish_step() -> None:
        if trainer_checks:  # RefDetTrainer.train_epoch, after backward, on every batch
            for _, p in model.named_parameters():
                if p.grad is not None:
                    p.grad.norm().item()
                    if torch.isnan(p.grad).any() or torch.isinf(p.grad).any():
                        raise FloatingPointError("NaN/Inf gradient")
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=STAGE2_CLIP)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()

    def forward_backward() -> float:
        return loss_and_backward(trainer_cls._forward_detection_step, det)

    def step() -> float:
        loss = forward_backward()
        finish_step()
        return loss

    def triplet_step() -> float:
        if small:
            raise NotImplementedError(
                "the original's triplet batches need the YOLO P5 width (its pooled global "
                "feature) to equal triplet_proj's hardcoded 256 (dino_encoder.py): YOLOv8n only"
            )
        loss = loss_and_backward(trainer_cls._forward_triplet_step, trip)
        finish_step()
        return loss

    peer.assigned_anchors = _assigned_anchors(mods, det, image)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    what = "small (YOLOv8 t2 + DINOv3 tiny)" if small else "YOLOv8n + DINOv3 ViT-S/16"
    peer.forward, peer.forward_backward, peer.step = forward, forward_backward, step
    peer.triplet_step = triplet_step
    peer.description = (
        f"original RefDet 075f362 ({what}, random init), {n_way}-way {k_shot}-shot, {batch} "
        f"queries at {image}², references at {support}², stage-2 loss (6 terms, batch-hard "
        f"triplet), AdamW groups 0.1/1/2/2 × 1e-4, clip {STAGE2_CLIP}, "
        f"{'bf16 autocast' if amp else 'float32'}"
        f"{', trainer checks' if trainer_checks else ''}; {n_params / 1e6:.2f}M parameters, "
        f"{n_train / 1e6:.2f}M requires_grad" + "".join(f"; {s}" for s in mods["stubs"])
    )
    return peer


def _assigned_anchors(mods: dict[str, Any], det: dict, image: int) -> int:
    """How many anchors loss_utils.assign_targets_to_anchors makes positive for this batch
    (all of them become CPE proposals: the CPE loop runs once per positive, each over all)."""
    import torch

    batch, ways = det["query_images"].shape[0], det["num_classes"]
    maps = [torch.zeros(batch, 1, image // s, image // s) for s in (4, 8, 16, 32)]
    sims = [torch.zeros(batch, ways, image // s, image // s) for s in (4, 8, 16, 32)]
    out = mods["training.loss_utils"].assign_targets_to_anchors(
        maps, sims, det["target_bboxes"], det["target_classes"], img_size=640
    )
    return int(out[0].shape[0])


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 1)


PARTS = ("forward", "forward_backward", "step", "triplet_step")


def measure(
    zalo_src: str,
    image: int = 320,
    repeats: int = 3,
    threads: int = 2,
    small: bool = False,
    *,
    parts: tuple[str, ...] = ("forward", "forward_backward", "step"),
    amp: bool = False,
    trainer_checks: bool = False,
    box: tuple[float, float, float, float] | None = None,
) -> dict:
    """Build the step and time each of `parts` (of `PARTS`): one warm-up call (`first_ms`),
    then the median of `repeats` calls. Losses first → last are those of the "step" calls.

    Cost warning: the original's loss is O(P³) in P = `assigned_anchors` (SimplifiedCPELoss
    loops over the P proposals in Python and each iteration's backward materialises a P × P
    gradient of the similarity matrix), and `roi_align`'s backward is O(P). With the default
    box P is 960 (small), 6,008 (320²) and 23,536 (640²): a 320² step takes minutes on one
    CPU core and a 640² step hours; time 640² with parts=("forward",) or a smaller box.
    """
    import torch

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    torch.set_num_threads(threads)
    peer = original_step(
        zalo_src, image=image, small=small, amp=amp, trainer_checks=trainer_checks, box=box
    )
    out: dict[str, Any] = {"description": peer.description}
    losses: list[float] = []
    terms: dict = {}

    def step() -> float:
        losses.append(peer.step())
        terms.update(peer.last_terms or {})
        return losses[-1]

    fns = {"forward": peer.forward, "forward_backward": peer.forward_backward, "step": step}
    fns["triplet_step"] = peer.triplet_step
    for name in parts:
        if name == "triplet_step" and small:
            out[name] = "n/a: the original's triplet batches need YOLOv8n's 256-d P5 feature"
            continue
        t = time_call(fns[name], repeats, sync=None)
        out[name] = {"first_ms": _ms(t.first_s), "median_ms": _ms(t.median_s)}
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    if losses:
        out["loss_first"], out["loss_last"] = losses[0], losses[-1]
        out["loss_terms_last"] = {k: round(v, 4) for k, v in terms.items()}
        out["finite"] = all(math.isfinite(v) for v in losses)
    out.update(
        image=peer.image,
        support=peer.support,
        small=small,
        assigned_anchors=peer.assigned_anchors,
        repeats=repeats,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zalo-src", required=True, help="extracted original (holds src/)")
    p.add_argument("--image", type=int, default=320)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--small", action="store_true", help="jdet quickstart sizes")
    p.add_argument(
        "--parts",
        default="forward,forward_backward,step",
        help=f"comma-separated, of {','.join(PARTS)}",
    )
    p.add_argument("--box", help="GT box x1,y1,x2,y2 in pixels (default 40,50,120,160·I/320)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (trainer's AMP on CPU)")
    p.add_argument("--trainer-checks", action="store_true", help="per-parameter NaN checks")
    a = p.parse_args(argv)
    result = measure(
        a.zalo_src,
        a.image,
        a.repeats,
        a.threads,
        a.small,
        parts=tuple(x for x in a.parts.split(",") if x),
        amp=a.amp,
        trainer_checks=a.trainer_checks,
        box=tuple(float(v) for v in a.box.split(",")) if a.box else None,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
