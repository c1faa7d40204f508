"""The PyTorch peers (the `convert` extra: torch, ultralytics, transformers), imported only when
a benchmark runs them; nothing here imports jax.

  ultralytics_step: one ultralytics YOLOv8n + v8DetectionLoss + torch AdamW step (the `train`
    benchmark's ultralytics rows and `profile vs`);
  torch_peer_rows: forward and forward + backward of ultralytics YOLOv8n and transformers'
    DINOv3 / DINOv2 ViT-S (the `models` benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.steps import YOLO_GAINS, gt_boxes
from benchmarks.timing import time_call


def loss_items_total(items: Any) -> float:
    """Sum of the loss items `DetectionModel.loss(batch)` returns next to the loss.

    ultralytics up to 8.3.x (8.3.253, what the parity fixtures pin): a tensor [box, cls, dfl]
    (`loss.detach()`); ultralytics 8.4.x: a dict of named loss items (user report: the 8.4
    line's `items.sum()` raised "AttributeError: 'dict' object has no attribute 'sum'").
    Both give the weighted loss the step minimises.
    """
    if isinstance(items, Mapping):
        return float(sum(float(v.sum()) if hasattr(v, "sum") else float(v) for v in items.values()))
    return float(items.sum())


def ultralytics_step(batch_size: int, image: int, num_boxes: int):
    """step() → loss: one eager ultralytics YOLOv8n + v8DetectionLoss + torch AdamW step on
    random images with `gt_boxes` (normalised xywh), the same gains as jdet's YOLOv8n step."""
    import types

    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
    model.args = types.SimpleNamespace(**YOLO_GAINS)  # what the trainer attaches (hyp gains)
    model.train()
    model.criterion = model.init_criterion()
    optimizer = torch.optim.AdamW(model.parameters())
    boxes = gt_boxes(batch_size, image, num_boxes).reshape(-1, 4) / image
    xywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], -1)
    batch = {
        "img": torch.rand(batch_size, 3, image, image),
        "batch_idx": torch.arange(batch_size).repeat_interleave(num_boxes).float(),
        "cls": torch.zeros(len(xywh), 1),
        "bboxes": torch.from_numpy(xywh),
    }

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss, items = model.loss(batch)
        loss.sum().backward()
        optimizer.step()
        return loss_items_total(items)

    return step


def _model_rows(name: str, model, x, repeats: int) -> list[tuple]:
    import torch

    def fwd():
        model.eval()
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(x)
        leaves = out if isinstance(out, (list, tuple)) else [getattr(out, "last_hidden_state", out)]
        sum((o.float() ** 2).sum() for o in leaves if torch.is_tensor(o)).backward()

    rows = []
    for step, fn in (("forward", fwd), ("forward + backward", fwd_bwd)):
        timing = time_call(fn, repeats, sync=None)
        rows.append((name, step, timing.first_s, timing.median_s))
    return rows


def torch_peer_rows(batch: int, image: int, repeats: int) -> tuple[list[tuple], str]:
    """(rows (name, step, first_s, median_s), note) for ultralytics YOLOv8n (batch at image²)
    and transformers DINOv3/DINOv2 ViT-S on 3 references at 256², or ([], why not)."""
    try:
        import torch
        from ultralytics.nn.tasks import DetectionModel
    except ImportError:
        return [], 'torch peers skipped: install the convert extra (pip install -e ".[convert]")'
    torch.manual_seed(0)
    yolo = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    rows = _model_rows("YOLOv8n (ultralytics)", yolo, torch.rand(batch, 3, image, image), repeats)
    try:
        # the parity generators' import, which hides a broken torchvision wheel
        from tests.fixtures.generate.parity_vit import import_transformers

        import_transformers()
        from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel
    except ImportError:
        return rows, "transformers peers skipped: transformers not installed"
    refs = torch.rand(3, 3, 256, 256)
    vit_s = {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
    }
    v3 = DINOv3ViTModel(DINOv3ViTConfig(**vit_s, patch_size=16, num_register_tokens=4))
    rows += _model_rows("DINOv3 ViT-S/16 (transformers)", v3, refs, repeats)
    v2 = Dinov2Model(Dinov2Config(**vit_s, patch_size=14, image_size=518))
    rows += _model_rows("DINOv2 ViT-S/14 (transformers)", v2, refs, repeats)
    return rows, f"torch {torch.__version__}, {torch.get_num_threads()} threads"
