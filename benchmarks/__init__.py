"""jdet's benchmarks: they print tables (never timed assertions: the machines are shared and
noisy; compare rows of one run, not runs). Run from a checkout of the repository (the package
is not installed with jdet):

    python -m benchmarks all [--quick] [--no-torch] [--json PATH]   every benchmark, one table
    python -m benchmarks losses [--batch 8] [--image 320] [--repeats 20]   per-term gradients
    python -m benchmarks probe [--batch 8] [--image 320]      per-term gradient check (✓/✗)
    python -m benchmarks models [--batch 8] [--image 320] [--no-torch]    jdet vs torch models
    python -m benchmarks step [--batch 8] [--image 320]       the full RefDet train step
    python -m benchmarks train [--rows yolo,refdet,torch] [--no-torch]    train-step throughput
    python -m benchmarks peer --zalo-src DIR [--sizes 320,640,small]   RefDet vs the original
    python -m benchmarks infer [--frames 48] [--sizes 320,640]   inference frames/s
    python -m benchmarks stream [--seconds 300]                  memory on a long 1080p video
    python -m benchmarks onnx [--config configs/photo.py]       ONNX on onnxruntime vs JAX
    python -m benchmarks depthwise [--batch 8]          depthwise conv: grouped vs shifted slices
    python -m benchmarks data [--workers 0,2] [--data-dir DIR]   input pipeline throughput
    python -m benchmarks peak [--repeats 5] [--quick]          this machine's float32 peak
    python -m benchmarks profile parts|trace|peak|flops|ab|vs|flags ...   one step, dissected

`python -m benchmarks COMMAND --help` lists a command's options; each module's docstring says
what it measures. The torch peers (ultralytics, transformers) need the `convert` extra and are
skipped without it.

Shared pieces: `benchmarks.timing` (the one timer), `benchmarks.steps` (the one train-step
builder), `benchmarks.peak.measure_kernels` (the one peak-FLOP meter), `benchmarks.flops` (XLA
cost analysis), `benchmarks.proc` (one measurement in a fresh process),
`benchmarks.torch_side` (the PyTorch peers), `benchmarks.refdet_peer` (the original RefDet's
step, run from its own source) and `benchmarks.probe` (the synthetic loss head).
"""
