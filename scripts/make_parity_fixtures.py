#!/usr/bin/env python3
"""Write the PyTorch-reference parity fixtures used by jdet's JAX tests.

Every fixture is a small ``.npz`` file under ``tests/fixtures/`` holding random inputs and the
outputs (and gradients) that the PyTorch reference implementation gives for them. The JAX test
suite loads these files with plain NumPy; it never imports torch. Keys, shapes, layouts and the
exact reference each value comes from are documented in ``tests/fixtures/README.md``.

References (never copied into jdet; imported at run time only):

* ultralytics 8.3.x (``pip install ultralytics==8.3.253``): ``utils.metrics.bbox_iou``,
  ``utils.loss.DFLoss``, ``utils.loss.v8DetectionLoss``, ``utils.tal.TaskAlignedAssigner``,
  ``utils.tal.make_anchors``.
* HobbitLong/SupContrast ``losses.py`` (``SupConLoss``), given with ``--supcon-losses PATH``.
* the original project (it-dainb/zalo_ai_2025 at 075f362), given with ``--zalo-repo PATH``
  (a folder holding ``src/losses/*.py`` of that commit): ``BatchHardTripletLoss``,
  ``TripletLoss``, ``DFLoss``, ``SupervisedContrastiveLoss``, ``PrototypeContrastiveLoss``,
  ``SimplifiedCPELoss`` and ``CPELoss``.
* ``torch.nn.TripletMarginWithDistanceLoss`` for the plain cosine triplet loss.

Everything runs on the CPU in float64 with one thread. Inputs come from NumPy generators seeded
from ``--seed`` and a fixed per-fixture number, and the ``.npz`` archives are written with fixed
zip timestamps, so running the script twice with the same seed and the same library versions
writes byte-identical files.

Usage (from the repository root)::

    /work/venv-convert/bin/python scripts/make_parity_fixtures.py \
        --supcon-losses /tmp/supcon/losses.py --zalo-repo /tmp/zalo

Fixtures whose reference path is not given are skipped (with a message), the others are
written anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import ultralytics
from torch import nn
from ultralytics.utils.loss import DFLoss, v8DetectionLoss
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import TaskAlignedAssigner, make_anchors

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures"
REG_MAX = 16  # ultralytics DFL bins per side (0..15)
MAX_TOTAL_BYTES = 1_000_000  # the loss fixtures
MAX_ALL_BYTES = 4_000_000  # with the model fixtures (--models)

# Per-fixture stream numbers: the generator of fixture k is default_rng([seed, k]).
STREAM = {
    "bbox_iou": 1,
    "dfl": 2,
    "assigner": 3,
    "assigner_random": 4,
    "v8loss": 5,
    "v8loss_nogt": 6,
    "supcon": 7,
    "triplet": 8,
    "triplet_batch_hard": 9,
    "original_losses": 10,
}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def rng_for(seed: int, name: str) -> np.random.Generator:
    """The NumPy generator of one fixture (independent streams, stable across runs)."""
    return np.random.default_rng([seed, STREAM[name]])


def t64(x, requires_grad: bool = False) -> torch.Tensor:
    """NumPy array -> float64 torch tensor (a fresh leaf)."""
    t = torch.tensor(np.asarray(x, dtype=np.float64), dtype=torch.float64)
    return t.requires_grad_(requires_grad)


def to_np(x) -> np.ndarray:
    """Tensor/array/scalar -> NumPy with the fixture dtypes (float64, int64 or bool)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bool:
            return x.numpy().astype(bool)
        if x.is_floating_point():
            return x.to(torch.float64).numpy()
        return x.to(torch.int64).numpy()
    a = np.asarray(x)
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64)
    raise TypeError(f"unsupported fixture dtype {a.dtype}")


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return to_np(x.permute(0, 2, 3, 1).contiguous())


def save_npz(path: Path, arrays: dict) -> int:
    """Write ``arrays`` as an .npz (deflated) with fixed zip timestamps; return its size.

    ``np.savez`` stamps each member with the current time, which would make reruns differ byte
    for byte; this writer is otherwise the same format (``np.load`` reads it, no pickles).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            arr = to_np(arrays[key])
            assert arr.dtype in (np.float64, np.int64, np.bool_), (key, arr.dtype)
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr.copy(order="C"), allow_pickle=False)  # keeps 0-d
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    size = path.stat().st_size
    print(f"  wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}"
          f" ({size / 1024:.1f} KiB, {len(arrays)} keys)")
    return size


def load_module_from_file(name: str, path: Path) -> types.ModuleType:
    """Import one reference .py file by path (without importing its package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (inputs are random, never near zero)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# 1. bbox_iou
# --------------------------------------------------------------------------------------------

# Category codes stored in bbox_iou.npz["kind"].
BOX_KINDS = {
    0: "random pair (overlapping, partly overlapping or apart)",
    1: "identical boxes",
    2: "disjoint (gap on at least one axis)",
    3: "strictly nested (one box inside the other, no shared edge)",
    4: "touching (shared edge or shared corner, zero intersection)",
    5: "thin box(es) (width or height 0.02, still > 0)",
    6: "same centre, different aspect (cross shape)",
}


def _box_pairs(rng: np.random.Generator):
    """64 xyxy box pairs covering the geometric cases listed in BOX_KINDS."""
    b1, b2, kind = [], [], []

    def add(a, b, k):
        b1.append(a)
        b2.append(b)
        kind.append(k)

    def rand_box(lo=0.0, hi=60.0, smin=0.5, smax=30.0):
        x1, y1 = rng.uniform(lo, hi, 2)
        w, h = rng.uniform(smin, smax, 2)
        return [x1, y1, x1 + w, y1 + h]

    for _ in range(36):  # random pairs: box 2 centred near box 1
        a = rand_box()
        cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
        cx, cy = cx + rng.normal(0, 10), cy + rng.normal(0, 10)
        w, h = rng.uniform(0.5, 30.0, 2)
        add(a, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0)
    for _ in range(4):  # identical
        a = rand_box()
        add(a, list(a), 1)
    for i in range(4):  # disjoint: gap on x, on y, on both
        a = rand_box(0, 30, 2, 20)
        gap = rng.uniform(0.5, 10)
        w, h = rng.uniform(2, 20, 2)
        x1 = a[2] + gap if i in (0, 2) else a[0] + rng.uniform(-5, 5)
        y1 = a[3] + gap if i in (1, 2, 3) else a[1] + rng.uniform(-5, 5)
        add(a, [x1, y1, x1 + w, y1 + h], 2)
    for i in range(6):  # strictly nested, box 2 inside box 1 (i < 3) or the reverse
        outer = rand_box(0, 40, 10, 40)
        fx = np.sort(rng.uniform(0.1, 0.9, 2))
        fy = np.sort(rng.uniform(0.1, 0.9, 2))
        ow, oh = outer[2] - outer[0], outer[3] - outer[1]
        inner = [outer[0] + fx[0] * ow, outer[1] + fy[0] * oh,
                 outer[0] + fx[1] * ow, outer[1] + fy[1] * oh]
        add(outer, inner, 3) if i < 3 else add(inner, outer, 3)
    for i in range(4):  # touching: shared vertical edge, shared horizontal edge, 2 corners
        a = rand_box(0, 30, 2, 20)
        w, h = rng.uniform(2, 20, 2)
        if i == 0:
            y1 = a[1] + rng.uniform(-1, 1)
            b = [a[2], y1, a[2] + w, y1 + h]
        elif i == 1:
            x1 = a[0] + rng.uniform(-1, 1)
            b = [x1, a[3], x1 + w, a[3] + h]
        else:
            b = [a[2], a[3], a[2] + w, a[3] + h]
        add(a, b, 4)
    for i in range(6):  # thin boxes: thin vs normal, normal vs thin, thin vs thin
        a = rand_box(10, 40, 5, 25)
        cx, cy = (a[0] + a[2]) / 2 + rng.normal(0, 2), (a[1] + a[3]) / 2 + rng.normal(0, 2)
        L = rng.uniform(5, 30)
        thin_w = [cx - 0.01, cy - L / 2, cx + 0.01, cy + L / 2]  # width 0.02
        thin_h = [cx - L / 2, cy - 0.01, cx + L / 2, cy + 0.01]  # height 0.02
        if i == 0:
            add(thin_w, a, 5)
        elif i == 1:
            add(a, thin_h, 5)
        elif i == 2:
            add(thin_h, a, 5)
        elif i == 3:
            add(a, thin_w, 5)
        elif i == 4:
            add(thin_w, thin_h, 5)
        else:
            add(thin_h, [thin_h[0] + 1.0, thin_h[1] + 0.005, thin_h[2] + 1.0, thin_h[3] + 0.005], 5)
    for _ in range(4):  # same centre, different aspect ratio (a cross)
        cx, cy = rng.uniform(20, 40, 2)
        L, S = rng.uniform(10, 30), rng.uniform(1, 8)
        add([cx - L / 2, cy - S / 2, cx + L / 2, cy + S / 2],
            [cx - S / 2, cy - L / 2, cx + S / 2, cy + L / 2], 6)
    b1, b2 = np.array(b1, np.float64), np.array(b2, np.float64)
    assert b1.shape == (64, 4)
    assert (b1[:, 2:] > b1[:, :2]).all() and (b2[:, 2:] > b2[:, :2]).all(), "w, h must be > 0"
    return b1, b2, np.array(kind, np.int64)


def _grad_valid(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Rows where IoU-family gradients are well defined (no kink of min/max/clamp).

    min/max of two equal coordinates, or an intersection side of exactly 0 (the clamp's
    boundary), are points where frameworks legitimately pick different subgradients
    (torch's clamp passes the gradient at the boundary, jnp.clip splits it).
    """
    ties = (b1 == b2).any(axis=1)
    iw = np.minimum(b1[:, 2], b2[:, 2]) - np.maximum(b1[:, 0], b2[:, 0])
    ih = np.minimum(b1[:, 3], b2[:, 3]) - np.maximum(b1[:, 1], b2[:, 1])
    return ~ties & (iw != 0) & (ih != 0)


def make_bbox_iou(seed: int, out: Path) -> int:
    rng = rng_for(seed, "bbox_iou")
    b1_np, b2_np, kind = _box_pairs(rng)
    arrays = {"box1": b1_np, "box2": b2_np, "kind": kind, "grad_valid": _grad_valid(b1_np, b2_np)}
    flags = {"iou": {}, "giou": {"GIoU": True}, "diou": {"DIoU": True}, "ciou": {"CIoU": True}}
    for name, kw in flags.items():
        box1, box2 = t64(b1_np, True), t64(b2_np, True)
        val = bbox_iou(box1, box2, xywh=False, **kw).squeeze(-1)  # [N,1] -> [N]
        val.sum().backward()
        arrays[name] = val
        arrays[f"{name}_grad_box1"] = box1.grad
        arrays[f"{name}_grad_box2"] = box2.grad
    return save_npz(out / "bbox_iou.npz", arrays)


# --------------------------------------------------------------------------------------------
# 2. DFL (ultralytics DFLoss)
# --------------------------------------------------------------------------------------------


def make_dfl(seed: int, out: Path) -> int:
    rng = rng_for(seed, "dfl")
    n = 32
    pred = rng.normal(0.0, 2.0, (n, 4, REG_MAX))
    upper = REG_MAX - 1 - 0.01  # DFLoss clamps targets to [0, reg_max - 1 - 0.01]
    target = rng.uniform(0.0, upper, (n, 4))
    target[0] = [0.0, 1.0, 7.0, 14.0]  # exact integers: all weight on the left bin
    target[1] = [upper, 0.5, 3.25, 0.001]  # the upper bound itself, a half, tiny
    pred_t = t64(pred, True)
    dfl = DFLoss(REG_MAX)
    # Exactly as BboxLoss calls it: logits [n*4, R] (box-major, side-minor), target [n, 4].
    loss = dfl(pred_t.view(-1, REG_MAX), t64(target).clone())  # clone: DFLoss clamps in place
    loss.sum().backward()
    # Per-side values: the same reference with one "side" per row (mean over a size-1 axis).
    per_side = dfl(t64(pred).view(-1, REG_MAX), t64(target).reshape(-1, 1).clone()).view(n, 4)
    assert torch.allclose(per_side.mean(-1, keepdim=True), loss.detach(), rtol=0, atol=1e-12)
    arrays = {
        "pred_dist": pred,
        "target": target,
        "target_flat": target.reshape(n * 4),
        "loss": loss,
        "loss_per_side": per_side,
        "pred_dist_grad": pred_t.grad,
        "reg_max": np.int64(REG_MAX),
    }
    return save_npz(out / "dfl.npz", arrays)


# --------------------------------------------------------------------------------------------
# 3. TaskAlignedAssigner
# --------------------------------------------------------------------------------------------


def anchors_px(img: int, strides=(8, 16, 32)):
    """ultralytics make_anchors for an img x img input; returns (points in px [A,2], stride [A])."""
    feats = [torch.zeros(1, 1, img // s, img // s, dtype=torch.float64) for s in strides]
    pts, st = make_anchors(feats, torch.tensor(strides, dtype=torch.float64), 0.5)
    return pts * st, st.squeeze(-1)


def random_pred_boxes(rng, anc_px: np.ndarray, stride: np.ndarray, batch: int) -> np.ndarray:
    """Random xyxy boxes (px) near each anchor: centre jitter ~N(0, s/2), sides 1.5..4.5 strides."""
    a = anc_px.shape[0]
    centre = anc_px[None] + rng.normal(0, 0.5, (batch, a, 2)) * stride[None, :, None]
    half = rng.uniform(0.75, 2.25, (batch, a, 2)) * stride[None, :, None]
    return np.concatenate([centre - half, centre + half], -1)


def _assigner_diagnostics(assigner, pd_scores, pd_bboxes, anc, gt_labels, gt_bboxes, mask_gt):
    """Re-run the assigner's stages to (a) prove the fixture is free of tie ambiguity and
    (b) export the intermediate tensors (candidates, metric, IoUs, pre-resolution positives)."""
    mask_in = assigner.select_candidates_in_gts(anc, gt_bboxes).bool()  # [B,M,A]
    mask_pos, align, overlaps = assigner.get_pos_mask(
        pd_scores, pd_bboxes, gt_labels, gt_bboxes, anc, mask_gt)
    k = assigner.topk
    real = mask_gt.squeeze(-1).bool()
    ambiguous = []
    for b in range(real.shape[0]):
        for m in range(real.shape[1]):
            if not real[b, m]:
                continue
            vals = align[b, m]
            vk = torch.sort(vals, descending=True).values[k - 1]
            n_above, n_tied = int((vals > vk).sum()), int((vals == vk).sum())
            # The chosen top-k set depends on tie breaking iff the k-th value is shared by
            # more anchors than fit, and one of those tied anchors is a candidate.
            if n_above + n_tied > k and bool((mask_in[b, m] & (vals == vk)).any()):
                ambiguous.append((b, m))
    # Anchors positive for several GTs are resolved by argmax over IoU: that must not tie.
    multi = mask_pos.sum(-2) > 1  # [B,A]
    # ultralytics resolves them with argmax over ALL GTs' IoU (overlaps is non-zero wherever
    # the anchor centre lies inside a real GT), not only over the GTs the anchor is positive
    # for: the anchor can end up assigned to a GT whose top-k it was not in.
    outside = torch.zeros_like(multi)
    for b, a_idx in multi.nonzero().tolist():
        top2 = torch.topk(overlaps[b, :, a_idx], 2).values
        if top2[0] == top2[1]:
            ambiguous.append((b, -1 - a_idx))
        outside[b, a_idx] = not bool(mask_pos[b, overlaps[b, :, a_idx].argmax(), a_idx])
    return {
        "ambiguous": ambiguous,
        "mask_in_gts": mask_in.bool(),
        "align_metric": align,
        "overlaps": overlaps,
        "mask_pos_before_resolve": mask_pos.bool(),
        "multi_gt_mask": multi,
        "resolved_outside_positives": outside,
    }


def run_assigner(pd_scores, pd_bboxes, anc, gt_labels, gt_bboxes, mask_gt, num_classes):
    """Call TaskAlignedAssigner exactly as v8DetectionLoss constructs and calls it."""
    assigner = TaskAlignedAssigner(topk=10, num_classes=num_classes, alpha=0.5, beta=6.0)
    args = (t64(pd_scores), t64(pd_bboxes), anc, torch.tensor(gt_labels)[..., None],
            t64(gt_bboxes), torch.tensor(mask_gt)[..., None].to(torch.float64))
    out = assigner(*args)
    diag = _assigner_diagnostics(assigner, *args)
    return out, diag


def _assigner_arrays(pd_scores, pd_bboxes, anc, stride, gt_labels, gt_bboxes, mask_gt,
                     out, diag, sub_seed):
    target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx = out
    return {
        "pd_scores": pd_scores,
        "pd_bboxes": pd_bboxes,
        "anc_points": anc,
        "stride": stride,
        "gt_labels": gt_labels,
        "gt_bboxes": gt_bboxes,
        "mask_gt": mask_gt,
        "target_labels": target_labels,
        "target_bboxes": target_bboxes,
        "target_scores": target_scores,
        "fg_mask": fg_mask,
        "target_gt_idx": target_gt_idx,
        "mask_in_gts": diag["mask_in_gts"],
        "align_metric": diag["align_metric"],
        "overlaps": diag["overlaps"],
        "mask_pos_before_resolve": diag["mask_pos_before_resolve"],
        "multi_gt_mask": diag["multi_gt_mask"],
        "resolved_outside_positives": diag["resolved_outside_positives"],
        "sub_seed": np.int64(sub_seed),
        "topk": np.int64(10),
        "alpha": np.float64(0.5),
        "beta": np.float64(6.0),
    }


def make_assigner(seed: int, out: Path) -> int:
    """Hand-placed GTs on a 64x64 image: 3 images (3, 1 and 0 real GTs), C = 3, M = 4."""
    anc_t, st_t = anchors_px(64)
    anc, stride = to_np(anc_t), to_np(st_t)
    B, M, C = 3, 4, 3
    gt_bboxes = np.zeros((B, M, 4))
    gt_labels = np.zeros((B, M), np.int64)
    mask_gt = np.zeros((B, M), bool)
    # image 0: GT 0 and GT 1 overlap on [18,34]x[10,30] (anchors there are claimed by both),
    # GT 2 is apart. Image 1: one large GT. Image 2: none (all rows padding).
    gt_bboxes[0, :3] = [[6, 6, 34, 30], [18, 10, 46, 38], [40, 40, 62, 60]]
    gt_labels[0, :3] = [0, 1, 2]
    gt_bboxes[1, 0] = [10, 20, 50, 56]
    gt_labels[1, 0] = 2
    mask_gt[0, :3] = True
    mask_gt[1, 0] = True
    rng = rng_for(seed, "assigner")
    for sub in range(100):  # deterministic resampling until the case is tie-free
        pd_scores = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.5, (B, anc.shape[0], C))))
        pd_bboxes = random_pred_boxes(rng, anc, stride, B)
        res, diag = run_assigner(pd_scores, pd_bboxes, anc_t, gt_labels, gt_bboxes, mask_gt, C)
        if not diag["ambiguous"] and bool(diag["multi_gt_mask"][0].any()):
            break
    else:
        raise RuntimeError("no tie-free assigner case with a multi-GT anchor found")
    fg = res[3]
    assert fg[0].any() and fg[1].any() and not fg[2].any()
    print(f"    assigner: sub_seed={sub}, fg per image={fg.sum(-1).tolist()}, "
          f"multi-GT anchors={int(diag['multi_gt_mask'].sum())}")
    arrays = _assigner_arrays(pd_scores, pd_bboxes, anc, stride, gt_labels, gt_bboxes, mask_gt,
                              res, diag, sub)
    return save_npz(out / "assigner.npz", arrays)


def make_assigner_random(seed: int, out: Path) -> int:
    """Random case: B = 4, M = 6, C = 4, 128x128 image (A = 336), GT counts include 0 and 6."""
    anc_t, st_t = anchors_px(128)
    anc, stride = to_np(anc_t), to_np(st_t)
    B, M, C, img = 4, 6, 4, 128.0
    rng = rng_for(seed, "assigner_random")
    # Resample until tie-free and until one multi-GT anchor is resolved to a GT it was not
    # positive for (the argmax-over-all-GTs quirk, so a JAX port that restricts the argmax to
    # the positive GTs fails this fixture).
    for sub in range(1000):
        counts = rng.permutation([0, 6, rng.integers(1, 6), rng.integers(1, 6)])
        gt_bboxes = np.zeros((B, M, 4))
        gt_labels = np.zeros((B, M), np.int64)
        mask_gt = np.zeros((B, M), bool)
        for b, n in enumerate(counts):
            ctr = rng.uniform(8, img - 8, (n, 2))
            wh = rng.uniform(6, 70, (n, 2))
            box = np.concatenate([ctr - wh / 2, ctr + wh / 2], -1).clip(0.0, img)
            gt_bboxes[b, :n] = box
            gt_labels[b, :n] = rng.integers(0, C, n)
            mask_gt[b, :n] = True
        pd_scores = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.5, (B, anc.shape[0], C))))
        pd_bboxes = random_pred_boxes(rng, anc, stride, B)
        res, diag = run_assigner(pd_scores, pd_bboxes, anc_t, gt_labels, gt_bboxes, mask_gt, C)
        if not diag["ambiguous"] and bool(diag["resolved_outside_positives"].any()):
            break
    else:
        raise RuntimeError("no tie-free random assigner case found")
    print(f"    assigner_random: sub_seed={sub}, gt counts={counts.tolist()}, "
          f"fg per image={res[3].sum(-1).tolist()}, "
          f"multi-GT anchors={int(diag['multi_gt_mask'].sum())}, "
          f"resolved outside positives={int(diag['resolved_outside_positives'].sum())}")
    arrays = _assigner_arrays(pd_scores, pd_bboxes, anc, stride, gt_labels, gt_bboxes, mask_gt,
                              res, diag, sub)
    return save_npz(out / "assigner_random.npz", arrays)


# --------------------------------------------------------------------------------------------
# 4. v8DetectionLoss
# --------------------------------------------------------------------------------------------


class _FakeDetect(nn.Module):
    """Stands in for ultralytics' Detect head: v8DetectionLoss reads nc, reg_max, stride."""

    def __init__(self, nc: int, strides=(8.0, 16.0, 32.0)):
        super().__init__()
        self.nc = nc
        self.reg_max = REG_MAX
        self.stride = torch.tensor(strides, dtype=torch.float64)


class _FakeDetectionModel(nn.Module):
    """Stands in for a DetectionModel: ``.args`` (loss gains), ``.model[-1]`` (head) and one
    parameter (v8DetectionLoss takes the device from ``next(model.parameters())``)."""

    def __init__(self, nc: int):
        super().__init__()
        self.args = types.SimpleNamespace(box=1.0, cls=1.0, dfl=1.0)  # gains 1: raw terms
        self.model = nn.ModuleList([_FakeDetect(nc)])
        self._device_anchor = nn.Parameter(torch.zeros(1))


def _v8_case(seed_name: str, seed: int, out: Path, gts: list[list[tuple]]) -> int:
    """Run v8DetectionLoss on random head outputs for a 64x64 batch with the given GTs.

    gts[b] is a list of (class, x1, y1, x2, y2) in pixels (integers, so the normalised xywh
    given to ultralytics and the xyxy pixels it rebuilds are exact in float64).
    """
    rng = rng_for(seed, seed_name)
    B, nc, img, M = len(gts), 2, 64, 3
    no = 4 * REG_MAX + nc

    # ultralytics batch format: one row per GT, bboxes normalised xywh.
    rows = [(b, *g) for b, img_gts in enumerate(gts) for g in img_gts]
    gt_boxes = np.zeros((B, M, 4))
    gt_labels = np.zeros((B, M), np.int64)
    gt_mask = np.zeros((B, M), bool)
    for b, img_gts in enumerate(gts):
        for j, (c, x1, y1, x2, y2) in enumerate(img_gts):
            gt_boxes[b, j] = [x1, y1, x2, y2]
            gt_labels[b, j] = c
            gt_mask[b, j] = True
    xyxy = np.array([r[2:] for r in rows], np.float64).reshape(-1, 4)
    xywhn = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1) / img
    batch = {
        "batch_idx": torch.tensor([float(r[0]) for r in rows], dtype=torch.float64),
        "cls": torch.tensor([[float(r[1])] for r in rows], dtype=torch.float64).view(-1, 1),
        "bboxes": t64(xywhn).view(-1, 4),
    }

    for sub in range(100):  # deterministic resampling until the assignment is tie-free
        feats = []
        for hw in (8, 4, 2):
            x = rng.normal(0.0, 1.0, (B, no, hw, hw))
            # Tilt the DFL logits towards small bins (expected side ~2-3 grid units) so the
            # predicted boxes have the GTs' scale and the CIoU/assigner terms are non-trivial.
            x[:, : 4 * REG_MAX] -= 0.35 * np.tile(np.arange(REG_MAX), 4)[None, :, None, None]
            feats.append(t64(x, True))

        crit = v8DetectionLoss(_FakeDetectionModel(nc))
        # Record what the loss hands to (and gets from) its assigner, for extra keys and the
        # tie-ambiguity check.
        record = {}
        inner = crit.assigner

        def recording_assigner(*args, _inner=inner, _record=record):
            res = _inner(*args)
            _record["args"], _record["out"] = args, res
            return res

        crit.assigner = recording_assigner
        loss_times_bs, items = crit(feats, batch)
        pd_scores, pd_bboxes, anc, lab, gtb, mgt = record["args"]
        if gtb.shape[1] == 0:
            break  # no GT: the assigner returns early, nothing can tie
        diag = _assigner_diagnostics(inner, pd_scores, pd_bboxes, anc, lab, gtb, mgt)
        if not diag["ambiguous"]:
            break
    else:
        raise RuntimeError(f"{seed_name}: no tie-free case found")

    # Returned: (loss * batch_size, loss.detach()) with loss = [box, cls, dfl] x gains (= 1).
    assert torch.equal(loss_times_bs.detach(), items * B)
    # Gradients of the raw terms (no batch factor): box + cls + dfl, and box alone (to tell
    # the box and DFL parts apart on the 64 DFL channels; cls only reaches the class channels).
    grads = torch.autograd.grad(loss_times_bs.sum() / B, feats, retain_graph=True)
    grads_box = torch.autograd.grad(loss_times_bs[0] / B, feats, allow_unused=True)
    grads_box = [torch.zeros_like(f) if g is None else g
                 for f, g in zip(feats, grads_box, strict=True)]
    if gtb.shape[1] > 0:
        # ultralytics rebuilds exactly our xyxy pixels and mask from the xywhn rows.
        m_u = gtb.shape[1]
        assert np.array_equal(to_np(gtb), gt_boxes[:, :m_u]), "GT reconstruction mismatch"
        assert np.array_equal(to_np(mgt.squeeze(-1)).astype(bool), gt_mask[:, :m_u])
    _, t_bboxes, t_scores, fg_mask, _ = record["out"]
    anc_np = to_np(anc)
    strides = np.concatenate([np.full(hw * hw, s) for hw, s in ((8, 8.0), (4, 16.0), (2, 32.0))])
    arrays = {
        "feats_s8": nchw_to_nhwc(feats[0]),
        "feats_s16": nchw_to_nhwc(feats[1]),
        "feats_s32": nchw_to_nhwc(feats[2]),
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "gt_mask": gt_mask,
        "box": items[0],
        "cls": items[1],
        "dfl": items[2],
        "loss_times_batch": loss_times_bs,
        "grad_s8": nchw_to_nhwc(grads[0]),
        "grad_s16": nchw_to_nhwc(grads[1]),
        "grad_s32": nchw_to_nhwc(grads[2]),
        "grad_box_s8": nchw_to_nhwc(grads_box[0]),
        "grad_box_s16": nchw_to_nhwc(grads_box[1]),
        "grad_box_s32": nchw_to_nhwc(grads_box[2]),
        # ultralytics-format targets, as fed to the loss
        "batch_idx": batch["batch_idx"].to(torch.int64),
        "batch_cls": batch["cls"].view(-1).to(torch.int64),
        "batch_bboxes_xywhn": batch["bboxes"],
        # assigner inputs/outputs inside the loss (pixels)
        "anc_points_px": anc_np,  # anchor centres in pixels (make_anchors x stride), [A, 2]
        "stride": strides,
        "assigner_pd_scores": pd_scores,
        "assigner_pd_bboxes": pd_bboxes,
        "fg_mask": fg_mask.bool(),
        "target_scores": t_scores,
        "target_bboxes": t_bboxes,
        "target_scores_sum": np.float64(max(float(t_scores.sum()), 1.0)),
        "nc": np.int64(nc),
        "reg_max": np.int64(REG_MAX),
        "imgsz": np.int64(img),
        "sub_seed": np.int64(sub),
    }
    print(f"    {seed_name}: sub_seed={sub}, box={items[0]:.6f} cls={items[1]:.6f} "
          f"dfl={items[2]:.6f}, fg per image={fg_mask.bool().sum(-1).tolist()}")
    return save_npz(out / f"{seed_name}.npz", arrays)


def make_v8loss(seed: int, out: Path) -> int:
    gts = [
        [(0, 8, 10, 40, 34), (1, 30, 20, 58, 50), (1, 4, 44, 20, 60)],
        [(0, 12, 12, 52, 44), (1, 20, 28, 36, 40)],
    ]
    return _v8_case("v8loss", seed, out, gts)


def make_v8loss_nogt(seed: int, out: Path) -> int:
    return _v8_case("v8loss_nogt", seed, out, [[], []])


# --------------------------------------------------------------------------------------------
# 5. SupCon (HobbitLong/SupContrast)
# --------------------------------------------------------------------------------------------


def make_supcon(seed: int, out: Path, losses_py: Path) -> int:
    ref = load_module_from_file("supcontrast_reference_losses", losses_py)
    crit = ref.SupConLoss(temperature=0.07, base_temperature=0.07)  # contrast_mode='all'
    rng = rng_for(seed, "supcon")
    arrays = {"temperature": np.float64(0.07), "base_temperature": np.float64(0.07)}

    def case(bsz, n_views, labels, suffix):
        feats = t64(unit_rows(rng.normal(size=(bsz, n_views, 16))), True)  # leaf = normalised
        lab = torch.tensor(labels, dtype=torch.int64)
        loss = crit(feats, labels=lab)
        loss.backward()
        arrays[f"features{suffix}"] = feats
        arrays[f"labels{suffix}"] = lab
        arrays[f"loss{suffix}"] = loss
        arrays[f"features_grad{suffix}"] = feats.grad
        # Anchors (view-major rows) having at least one positive other than themselves.
        lab_all = np.tile(np.asarray(labels), n_views)
        same = lab_all[:, None] == lab_all[None, :]
        has_pos = (same.sum(1) - 1) > 0
        arrays[f"anchor_has_positive{suffix}"] = has_pos
        # Derived (exact): anchors without positives contribute exactly 0 to the reference's
        # mean over all bsz*n_views anchors, so the mean over anchors WITH positives is a rescale.
        scale = has_pos.size / max(int(has_pos.sum()), 1)
        arrays[f"loss_mean_over_pos{suffix}"] = loss.detach() * scale
        arrays[f"features_grad_mean_over_pos{suffix}"] = feats.grad * scale
        return loss

    loss_a = case(8, 2, [0, 1, 2, 0, 1, 2, 3, 3], "")
    loss_b = case(6, 1, [0, 1, 1, 2, 3, 3], "_b")  # labels 0 and 2 have no positive
    assert torch.isfinite(loss_a) and torch.isfinite(loss_b)
    print(f"    supcon: loss={loss_a.item():.6f} loss_b={loss_b.item():.6f}")
    return save_npz(out / "supcon.npz", arrays)


# --------------------------------------------------------------------------------------------
# 6. Triplet losses
# --------------------------------------------------------------------------------------------


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(a, b)


def make_triplet(seed: int, out: Path) -> int:
    rng = rng_for(seed, "triplet")
    n, d = 10, 8
    anc = rng.normal(size=(n, d))
    pos = anc + rng.normal(0, 0.9, (n, d))  # mostly closer than the negative, some not
    neg = rng.normal(size=(n, d))
    a, p, q = t64(anc, True), t64(pos, True), t64(neg, True)
    crit = nn.TripletMarginWithDistanceLoss(distance_function=cosine_distance, margin=0.3)
    loss = crit(a, p, q)  # reduction='mean', swap=False
    loss.backward()
    per = nn.TripletMarginWithDistanceLoss(
        distance_function=cosine_distance, margin=0.3, reduction="none")(t64(anc), t64(pos),
                                                                          t64(neg))
    hinge_arg = cosine_distance(t64(anc), t64(pos)) - cosine_distance(t64(anc), t64(neg)) + 0.3
    assert (hinge_arg.abs() > 1e-6).all(), "a triplet sits on the hinge kink"
    active = hinge_arg > 0
    assert active.any() and (~active).any(), "want both active and inactive triplets"
    print(f"    triplet: loss={loss.item():.6f}, active={int(active.sum())}/{n}")
    arrays = {
        "anchor": anc, "positive": pos, "negative": neg, "loss": loss,
        "loss_per_sample": per, "active": active,
        "anchor_grad": a.grad, "positive_grad": p.grad, "negative_grad": q.grad,
        "margin": np.float64(0.3),
    }
    return save_npz(out / "triplet.npz", arrays)


def make_triplet_batch_hard(seed: int, out: Path, zalo: Path) -> int:
    ref = load_module_from_file("zalo_triplet_loss", zalo / "src" / "losses" / "triplet_loss.py")
    crit = ref.BatchHardTripletLoss(margin=0.3, distance="cosine")  # as combined_loss builds it
    rng = rng_for(seed, "triplet_batch_hard")
    d = 8
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4], np.int64)  # label 4: no positive
    centres = rng.normal(size=(5, d))
    emb = centres[labels] + rng.normal(0, 0.8, (labels.size, d))
    e = t64(emb, True)
    loss = crit(e, torch.tensor(labels))
    loss.backward()
    arrays = {"embeddings": emb, "labels": labels, "loss": loss, "embeddings_grad": e.grad,
              "margin": np.float64(0.3)}
    # Degenerate batches: no anchor has a positive (b) / no anchor has a negative (c). The
    # reference returns a constant 0 (no graph), so the gradient is identically zero.
    for suffix, lab in (("_b", np.arange(6)), ("_c", np.zeros(6, np.int64))):
        emb_x = rng.normal(size=(6, d))
        loss_x = crit(t64(emb_x), torch.tensor(lab, dtype=torch.int64))
        assert float(loss_x) == 0.0 and not loss_x.requires_grad
        arrays.update({f"embeddings{suffix}": emb_x, f"labels{suffix}": lab.astype(np.int64),
                       f"loss{suffix}": loss_x, f"embeddings_grad{suffix}": np.zeros_like(emb_x)})
    # Per-anchor hinge terms of the main case, recomputed here only to assert that no anchor
    # sits on a max/min tie or on the hinge kink (so the gradient is well defined).
    z = unit_rows(emb)
    dist = 1.0 - z @ z.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    diff = labels[:, None] != labels[None, :]
    for i in range(labels.size):
        if same[i].any() and diff[i].any():
            dp, dn = np.sort(dist[i, same[i]]), np.sort(dist[i, diff[i]])
            assert (dp.size < 2 or dp[-1] != dp[-2]) and (dn.size < 2 or dn[0] != dn[1])
            assert abs(dp[-1] - dn[0] + 0.3) > 1e-6
    print(f"    triplet_batch_hard: loss={loss.item():.6f}")
    return save_npz(out / "triplet_batch_hard.npz", arrays)


# --------------------------------------------------------------------------------------------
# 7. The original project's other losses (extra; only with --zalo-repo)
# --------------------------------------------------------------------------------------------


def make_original_losses(seed: int, out: Path, zalo: Path) -> int:
    src = zalo / "src" / "losses"
    dfl_mod = load_module_from_file("zalo_dfl_loss", src / "dfl_loss.py")
    sc_mod = load_module_from_file("zalo_supcon_loss", src / "supervised_contrastive_loss.py")
    cpe_mod = load_module_from_file("zalo_cpe_loss", src / "cpe_loss.py")
    tri_mod = load_module_from_file("zalo_triplet_loss2", src / "triplet_loss.py")
    rng = rng_for(seed, "original_losses")
    arrays = {}

    # DFL, original: 17 bins per side (reg_max=16 -> bins 0..16), -log(softmax + 1e-7),
    # sum over the 4 sides, mean over boxes, target clamped to [0, 16 - 1e-6].
    n = 8
    pred = rng.normal(0.0, 2.0, (n, 4 * (16 + 1)))
    target = rng.uniform(0.0, 16.0, (n, 4))
    target[0] = [0.0, 5.0, 16.0, 17.5]  # integer, integer, the top (clamped), above (clamped)
    target[1] = [-1.0, 15.5, 0.25, 15.999999]  # below 0 (clamped), fractions
    p = t64(pred, True)
    loss = dfl_mod.DFLoss(reg_max=16)(p, t64(target))
    loss.backward()
    arrays.update({"dfl_pred_dist": pred, "dfl_target": target, "dfl_loss": loss,
                   "dfl_pred_dist_grad": p.grad})

    # SupervisedContrastiveLoss [N, D] (normalises internally; sum clamp 1e-6; plain mean
    # over all N anchors, no-positive anchors contribute 0).
    feats = rng.normal(size=(8, 16)) * rng.uniform(0.5, 2.0, (8, 1))
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3], np.int64)  # label 2: no positive
    f = t64(feats, True)
    loss = sc_mod.SupervisedContrastiveLoss(temperature=0.07)(f, torch.tensor(labels))
    loss.backward()
    arrays.update({"supcon_features": feats, "supcon_labels": labels, "supcon_loss": loss,
                   "supcon_features_grad": f.grad})

    # PrototypeContrastiveLoss: CE over cos(q, proto)/0.07.
    q_np, pr_np = rng.normal(size=(8, 16)), rng.normal(size=(3, 16))
    q_lab = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int64)
    q, pr = t64(q_np, True), t64(pr_np, True)
    loss = sc_mod.PrototypeContrastiveLoss(temperature=0.07)(q, pr, torch.tensor(q_lab))
    loss.backward()
    arrays.update({"proto_query": q_np, "proto_prototypes": pr_np, "proto_labels": q_lab,
                   "proto_loss": loss, "proto_query_grad": q.grad,
                   "proto_prototypes_grad": pr.grad})

    # SimplifiedCPELoss (the one combined_loss uses) and the full CPELoss, tau = 0.1.
    cf = rng.normal(size=(10, 16))
    c_lab = np.array([0, 0, 0, 1, 1, -1, -1, 2, 1, 0], np.int64)  # -1 = background; 2 alone
    c_iou = np.array([0.9, 0.75, 0.6, 0.85, 0.7, 0.1, 0.2, 0.8, 0.4, 0.55])
    x = t64(cf, True)
    loss = cpe_mod.SimplifiedCPELoss(temperature=0.1)(x, torch.tensor(c_lab))
    loss.backward()
    arrays.update({"cpe_features": cf, "cpe_labels": c_lab, "cpe_loss": loss,
                   "cpe_features_grad": x.grad})
    x = t64(cf, True)
    loss = cpe_mod.CPELoss(temperature=0.1)(x, t64(c_iou), torch.tensor(c_lab))
    loss.backward()
    arrays.update({"cpe_full_ious": c_iou, "cpe_full_loss": loss, "cpe_full_features_grad": x.grad})

    # Plain TripletLoss(cosine) of the original on triplet.npz's inputs (same generator).
    trng = rng_for(seed, "triplet")
    anc = trng.normal(size=(10, 8))
    pos = anc + trng.normal(0, 0.9, (10, 8))
    neg = trng.normal(size=(10, 8))
    loss = tri_mod.TripletLoss(margin=0.3, distance="cosine")(t64(anc), t64(pos), t64(neg))
    arrays["triplet_plain_loss"] = loss
    print(f"    original_losses: dfl={arrays['dfl_loss'].item():.6f} "
          f"supcon={arrays['supcon_loss'].item():.6f} cpe={arrays['cpe_loss'].item():.6f}")
    return save_npz(out / "original_losses.npz", arrays)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def check_versions(allow_other: bool) -> None:
    """The fixtures pin ultralytics 8.3 assigner/loss semantics; refuse other lines."""
    v = ultralytics.__version__
    if not v.startswith("8.3.") and not allow_other:
        sys.exit(f"ultralytics {v} installed; these fixtures need an 8.3.x release "
                 "(pip install ultralytics==8.3.253) or pass --allow-other-ultralytics")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    ap.add_argument("--supcon-losses", type=Path,
                    help="path to HobbitLong/SupContrast losses.py (for supcon.npz)")
    ap.add_argument("--zalo-repo", type=Path,
                    help="folder with src/losses/ of it-dainb/zalo_ai_2025 at 075f362 "
                         "(for triplet_batch_hard.npz and original_losses.npz)")
    ap.add_argument("--allow-other-ultralytics", action="store_true",
                    help="do not insist on an ultralytics 8.3.x release")
    ap.add_argument("--models", action="store_true",
                    help="also write the model forward-parity fixtures: yolo_tiny.npz "
                         "(scripts/parity_yolo.py), dinov2/dinov3 tiny safetensors + vit_tiny.npz "
                         "(scripts/parity_vit.py, needs transformers) and refdet_heads.npz "
                         "(scripts/parity_refdet.py, needs --zalo-repo with src/models/)")
    args = ap.parse_args()

    check_versions(args.allow_other_ultralytics)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # one fixed reduction order
    torch.manual_seed(args.seed)  # nothing should draw from torch's RNG; belt and braces

    out = args.out
    print(f"ultralytics {ultralytics.__version__}, torch {torch.__version__}, "
          f"numpy {np.__version__}; seed {args.seed}; writing to {out}")
    sizes = {}
    sizes["bbox_iou.npz"] = make_bbox_iou(args.seed, out)
    sizes["dfl.npz"] = make_dfl(args.seed, out)
    sizes["assigner.npz"] = make_assigner(args.seed, out)
    sizes["assigner_random.npz"] = make_assigner_random(args.seed, out)
    sizes["v8loss.npz"] = make_v8loss(args.seed, out)
    sizes["v8loss_nogt.npz"] = make_v8loss_nogt(args.seed, out)
    sizes["triplet.npz"] = make_triplet(args.seed, out)
    refs = {}
    if args.supcon_losses:
        sizes["supcon.npz"] = make_supcon(args.seed, out, args.supcon_losses)
        refs["supcon_losses_py_sha256"] = sha256_of(args.supcon_losses)
    else:
        print("  skipped supcon.npz (no --supcon-losses)")
    if args.zalo_repo:
        sizes["triplet_batch_hard.npz"] = make_triplet_batch_hard(args.seed, out, args.zalo_repo)
        sizes["original_losses.npz"] = make_original_losses(args.seed, out, args.zalo_repo)
        for f in ("triplet_loss.py", "dfl_loss.py", "supervised_contrastive_loss.py",
                  "cpe_loss.py"):
            refs[f"zalo_{f}_sha256"] = sha256_of(args.zalo_repo / "src" / "losses" / f)
    else:
        print("  skipped triplet_batch_hard.npz, original_losses.npz (no --zalo-repo)")

    total = sum(sizes.values())
    print(f"loss fixtures: {total / 1024:.1f} KiB")
    assert total < MAX_TOTAL_BYTES, "loss fixtures must stay under 1 MB"
    if args.models:
        sys.path.insert(0, str(Path(__file__).parent))
        torch.set_default_dtype(torch.float32)  # the model fixtures are float32
        from parity_vit import write_vit_fixtures
        from parity_yolo import write_yolo_fixtures

        written = write_yolo_fixtures(out, args.seed) + write_vit_fixtures(out, args.seed)
        if args.zalo_repo:
            from parity_refdet import write_refdet_fixtures

            written += write_refdet_fixtures(out, args.seed, args.zalo_repo)
        else:
            print("  skipped refdet_heads.npz (no --zalo-repo)")
        for path in written:
            sizes[path.name] = path.stat().st_size

    manifest = {
        "generator": "scripts/make_parity_fixtures.py",
        "seed": args.seed,
        "versions": {"ultralytics": ultralytics.__version__, "torch": torch.__version__,
                     "numpy": np.__version__,
                     "python": ".".join(map(str, sys.version_info[:3]))},
        "reference_files": refs,
        "files": {name: {"bytes": size, "sha256": sha256_of(out / name)}
                  for name, size in sorted(sizes.items())},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    total = sum(sizes.values())
    print(f"total {total / 1024:.1f} KiB in {len(sizes)} files (+ manifest.json)")
    assert total < MAX_ALL_BYTES, "fixtures must stay a few MB in total"


if __name__ == "__main__":
    main()
