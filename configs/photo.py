"""Photo: RefDet on a challenge-layout folder of real-photo videos, validated on held-out objects.

    python -m jdet.data.split --src ../shared/data/photo-train --holdout Tower,Boxes --out folds/0
    python -m jdet.train --config configs/photo.py:folds/0 --workdir runs/photo0

The argument after the colon is a folder with train/ and val/ in the challenge layout
(default folds/0): training reads train/, evaluation val/.

`jdet.data.split` holds whole objects out (every video of Tower and Boxes goes to val), so the
validation score is on objects the model never saw, as in the challenge. Model: YOLOv8 "t2"
query branch with the DINOv3 tiny support encoder (random initialisation: nothing is
downloaded), queries letterboxed to 256² (a 640×360 frame at 0.4×: the median object of ~49
px becomes ~20 px, which the P2 head at stride 4 still sees), references at 64²; 2-way
3-shot 4-query episodes, a quarter of the queries negatives. Evaluation every 400 steps on
every 2nd frame; best weights by mAP50.

Result (2026-12-01, 2-core Intel Xeon (Sapphire Rapids) VM, one CPU device, oneDNN
convolutions; fold folds/0 = photo-train with Tower and Boxes held out: 41 training videos of
5 objects, 7 validation videos). Step 1000 on the held-out objects: mAP50 0.306, mAP50-95
0.091 (every 2nd frame, as evaluated during training); on every frame
(`scripts/ablate_temporal.py`) mAP50 0.301 and ST-IoU 0.2174 with the decisions below
(0.2220 causal; 0.2157 per frame at 0.02; 0 at the original's 0.25: the scores stay below
it); template matching scores 0.0319 on the same videos. Wall time: 39 min 15 s for 1,000
steps and three evaluations, but beside other jobs all along (template matching, memory
benchmarks), so an upper bound; the same recipe without copy-paste took 22 min 38 s alone,
dataset build included (~1.2 s/step), and reached mAP50 0.149 (another run of it: 0.182),
ST-IoU 0.1655 (0.2004). One fold only: the other objects were not held out yet.
docs/inference.md §3 and §6 have the tables.
"""

import pathlib

from jdet.config import base_config, finalize


def get_config(arg: str | None = None):
    c = base_config()
    folds = pathlib.Path(arg or "folds/0")
    c.data.source = str(folds / "train")
    c.eval.samples = str(folds / "val")
    c.data.query_size = 256
    c.data.support_size = 64
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
            total_steps=1000,
            batch_size=8,
            log_every_steps=10,
            ckpt_every_steps=400,
            eval_every_steps=400,
            keep_ckpts=2,
        )
    )
    c.eval.stride = 2
    c.eval.best_metric = "metrics/mAP50"
    # Decisions chosen on fold 0's held-out objects over two runs of this recipe
    # (docs/inference.md §3): the scores of these models stay low, so the start threshold is
    # low; association and a minimum length of 5 gain ~1 % offline. Causal runs should drop
    # min_length (--min-length 1): a late start costs more than a blip there.
    c.eval.temporal.update(dict(mode="offline", threshold=0.02, assoc_iou=0.5, min_length=5))
    c.debug.grad_check_every = -1
    return finalize(c)
