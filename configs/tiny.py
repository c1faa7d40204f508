"""Tiny RefDet on a 2-video synthetic set, 3 steps: for tests and CI.

    python -m jdet.train --config configs/tiny.py --workdir /tmp/jdet_tiny [--check]

Batches of 8 are 2 episodes of 2 ways × 2 queries, so 2 processes can share them. The command
above took 3 min 2 s wall (2026-11-27, 2-core AMD EPYC VM, 8 virtual CPU devices as in the
tests: XLA_FLAGS=--xla_force_host_platform_device_count=8, empty compilation cache) and 64 s
with the compiled programs in the cache (--config.data.val_videos=0).
It also generates 1 validation video and evaluates 8 of its frames at the end (the
evaluation, best-weights and report paths). Metric: not meaningful (a smoke test, not a
recipe; 3 steps from random weights).
"""

from jdet.config import base_config, finalize


def get_config(arg: str | None = None):
    c = base_config()
    c.data.synthetic.update(dict(num_videos=2, frames=20, width=96, height=64, reference_size=64))
    c.data.query_size = 64
    c.data.support_size = 32
    c.data.max_boxes = 4
    c.data.q_query = 2  # batch 8 = 2 episodes of 2 ways × 2 queries: 2 processes can share it
    c.data.mosaic_prob = 0.0
    c.data.num_threads = 1
    c.data.val_videos = 1
    c.eval.max_frames = 8
    c.model.update(dict(yolo_scale="t2", encoder="dinov3-tiny", frozen_blocks=1, nc_base=0))
    c.train.update(
        dict(total_steps=3, batch_size=8, log_every_steps=1, ckpt_every_steps=1, keep_ckpts=3)
    )
    c.optim.lr = 1e-3
    c.debug.grad_check_every = 0
    return finalize(c)
