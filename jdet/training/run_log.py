"""Run metrics: metrics.jsonl + TensorBoard (tensorboardX), with docs/design.md §4 names."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

from jdet.losses import TERM_NAMES


def train_record(step: int, metrics: Mapping[str, Any], lr: float) -> dict[str, float]:
    """Host metrics of `train_step` → {"step", "train/loss", "train/<term>_loss", "lr",
    "grad_norm", "train/num_fg", "train/skipped"}."""
    record: dict[str, Any] = {"step": int(step), "train/loss": float(metrics["loss"])}
    for name in TERM_NAMES:
        key = f"{name}_loss"
        if key in metrics:
            record[f"train/{key}"] = float(metrics[key])
    record["lr"] = float(lr)
    record["grad_norm"] = float(metrics["grad_norm"])
    record["train/num_fg"] = float(metrics["num_fg"])
    record["train/skipped"] = int(metrics.get("total_skipped", metrics["skipped"]))
    return record


class MetricsWriter:
    """Appends JSON lines to workdir/metrics.jsonl and scalars to TensorBoard events."""

    def __init__(self, workdir: str | pathlib.Path):
        from tensorboardX import SummaryWriter

        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._file = self.path.open("a")
        self._tb = SummaryWriter(str(workdir))

    def write(self, record: Mapping[str, Any]) -> None:
        clean = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in record.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (empty list when it does not exist)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(path: str | pathlib.Path, step: int) -> int:
    """Drop the records of steps > `step` from a JSONL file (a resumed run redoes them after
    the checkpoint it resumed from); returns how many were dropped. Written atomically."""
    path = pathlib.Path(path)
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)
    return len(lines) - len(keep)
