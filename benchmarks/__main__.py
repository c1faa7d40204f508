"""`python -m benchmarks COMMAND [options]`: the command line of jdet's benchmarks (see
`benchmarks/__init__.py` for the commands)."""

from __future__ import annotations

import argparse
import sys

import benchmarks
from benchmarks import (
    data,
    depthwise,
    infer,
    losses,
    models,
    onnx,
    peak,
    peer,
    proc,
    profiling,
    stream,
    suite,
    train,
)

# name: (help, add_arguments, run(args) → exit status or None)
COMMANDS = {
    "all": ("every benchmark in one table", suite.add_arguments, suite.bench_all),
    "losses": ("loss_terms and per-term gradient cost", losses.add_arguments, losses.bench_losses),
    "probe": (
        "per-term gradient check on the synthetic head",
        losses.add_probe_arguments,
        losses.bench_probe,
    ),
    "models": (
        "query branch and support encoders, jdet vs torch",
        models.add_arguments,
        models.bench_models,
    ),
    "step": ("the full RefDet train step", train.add_step_arguments, train.bench_step),
    "train": (
        "train-step throughput, jdet vs ultralytics",
        train.add_arguments,
        train.bench_train,
    ),
    "peer": (
        "the RefDet train step against the original PyTorch RefDet",
        peer.add_arguments,
        peer.bench_peer,
    ),
    "infer": ("inference frames/s on a 640×360 video", infer.add_arguments, infer.bench_infer),
    "onnx": (
        "the exported ONNX detector on onnxruntime against JAX",
        onnx.add_arguments,
        onnx.bench_onnx,
    ),
    "stream": ("memory on a long video (streaming)", stream.add_arguments, stream.bench_stream),
    "depthwise": (
        "depthwise convolutions: XLA's grouped conv vs shifted slices",
        depthwise.add_arguments,
        depthwise.bench_depthwise,
    ),
    "data": ("episodic input pipeline throughput", data.add_arguments, data.bench_data),
    "peak": ("float32 peak GFLOP/s under XLA", peak.add_arguments, peak.bench_peak),
    "profile": (
        "where the YOLOv8n train step's time goes",
        profiling.add_arguments,
        profiling.main,
    ),
}
# what a child process (`benchmarks.proc.run_in_child`) can measure
MEASURES = {kind: measure for kind, (_, measure) in suite.CHILDREN.items()}
MEASURES["train"] = train.measure_row
MEASURES["peer"] = peer.measure_row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [proc.CHILD]:  # KIND OUT SPEC_JSON
        proc.child_main(MEASURES[argv[1]], argv[2], argv[3])
        return 0
    if argv[:1] == [profiling.SERVE]:
        profiling.serve(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=benchmarks.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_, description=help_)
        add_arguments(command)
        command.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
