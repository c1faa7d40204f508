"""Photo: RefDet on a challenge-layout folder of real-photo videos, validated on held-out objects.

    python -m jdet.data.split --src ../shared/data/photo-train --holdout Tower,Boxes --out folds/0
    python -m jdet.train --config configs/photo.py:folds/0 --workdir runs/photo0

The argument after the colon is a folder with train/ and val/ in the challenge layout
(default folds/0): training reads train/, evaluation val/.

`jdet.data.split` holds whole objects out (every video of Tower and Boxes goes to val), so the
validation score is on objects the model never saw, as in the challenge. Model: YOLOv8 "t2"
query branch with the DINOv3 tiny support encoder (random initialisation: nothing is
downloaded), queries letterboxed to 256² (a 640×360 frame at 0.4×: the median object of ~49
px becomes ~20 px, which the P2 head at stride 4 still sees), references at 128²; 2-way
3-shot 4-query episodes, a quarter of the queries negatives, half of the positives made by
copy-paste. 2,000 steps; evaluation every 500 steps on every 2nd frame; best weights by
mAP50. Predictions are re-scored by colour similarity to the references (`eval.appearance`)
and decided offline (`eval.temporal`).

Result (2026-12-02, 2-core Intel Xeon (Sapphire Rapids) VM, one CPU device, oneDNN
convolutions; fold folds/0 = photo-train with Tower and Boxes held out: 41 training videos of
5 objects, 7 validation videos, 504 frames). Step 2000 on the held-out objects: mAP50 0.428,
mAP50-95 0.198 (every 2nd frame, as evaluated during training); on every frame
(`scripts/ablate_temporal.py`) mAP50 0.443, mAP50-95 0.190, and ST-IoU **0.2985** with the
decisions below (0.2946 causal with --min-length 1; 0.2297 for the detector's scores with the
per-frame rule at its best threshold, 0.05; 0.0307 at the original's 0.25); template matching
scores 0.0319 on the same videos. Wall time 49 min 57 s for 2,000 steps and four evaluations,
dataset build included, beside other jobs of mine (evaluations, tests): an upper bound. The
previous recipe (1,000 steps, references at 64²) reached mAP50 0.301 and ST-IoU 0.2174 in
~23 min.

Fold folds/1 (Chair and Coins held out, `--holdout Chair,Coins`), same recipe and decisions
(chosen on fold 0), 2026-12-02, same machine, 51 min beside other jobs: frame mAP50 0.077,
ST-IoU 0.1428 offline, 0.1450 causal with --min-length 1 (0.0870 for the detector's scores
per frame at their best threshold); Coins scores ~0. Fold folds/2 (Clock and Patch held
out), same recipe and decisions, 2026-12-02, same machine, 72 min beside other jobs: frame
mAP50 0.220, ST-IoU 0.2648 offline, 0.2655 causal (0.1917 for the detector's scores per
frame); Patch 0.53, Clock 0.02. Fold folds/3 (Flag held out), the same: frame mAP50
0.177, ST-IoU 0.1853 offline, 0.1935 causal. Mean over the four folds (every object held
out once): 0.223. docs/inference.md §3 and §6–§9 have the tables.
"""

import pathlib

from jdet.config import base_config, finalize


def get_config(arg: str | None = None):
    c = base_config()
    folds = pathlib.Path(arg or "folds/0")
    c.data.source = str(folds / "train")
    c.eval.samples = str(folds / "val")
    c.data.query_size = 256
    c.data.support_size = 128
    c.data.max_boxes = 4
    c.data.mosaic_prob = 0.3
    c.data.num_threads = 2
    # Half of the positive query frames made by pasting the reference photo's object into a
    # frame of the same video without it (jdet.data.copy_paste): mAP50 on the held-out objects
    # 0.15–0.18 → 0.30 (docs/inference.md §6).
    c.data.copy_paste = 0.5
    c.model.update(
        dict(
            yolo_scale="t2",
            encoder="dinov3-tiny",
            frozen_blocks=1,
            nc_base=0,
            proto_logit_bias=True,
        )
    )
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.train.update(
        dict(
            total_steps=2000,
            batch_size=8,
            log_every_steps=10,
            ckpt_every_steps=500,
            eval_every_steps=500,
            keep_ckpts=2,
        )
    )
    c.eval.stride = 2
    c.eval.best_metric = "metrics/mAP50"
    # Boxes re-scored by colour similarity to the references (jdet.inference.appearance), then
    # decided: values chosen on fold 0's held-out objects (docs/inference.md §3, §7). Causal
    # runs should drop min_length (--min-length 1).
    c.eval.appearance = 3.0
    c.eval.temporal.update(dict(mode="offline", threshold=0.08, assoc_iou=0.3, min_length=2))
    c.debug.grad_check_every = -1
    return finalize(c)
