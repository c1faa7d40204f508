"""Input-pipeline benchmark: episodes/s and images/s of decode + augment + batch, peak RSS.

    python -m benchmarks data [--videos 8 --frames 80 --size 320x192] [--query-size 320]
                              [--batches 20 --workers 0,2 --threads 2]
    python -m benchmarks data --data-dir data/tfds          # an existing build
    python -m benchmarks data --src data/raw                # build a raw split first

Without --src/--data-dir it generates a synthetic dataset (jdet.data.synthetic) in a temporary
folder and builds it, printing the build speed. Each row runs in a fresh process so that its
peak RSS (resource.getrusage ru_maxrss) is its own: "main" is the process consuming batches,
"workers" the largest grain worker process (0 without workers). The first batch (worker start
+ first decode) is timed separately and left out of the rates. "images" counts query images;
each episode also decodes N·K support photos (cached after the first use). The machine is
shared and noisy: compare rows of one run, not runs.

`bench_data(args)` prints the table; `measure_data(args)` returns the numbers (`python -m
benchmarks all` uses it).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import pathlib
import platform
import resource
import tempfile

from benchmarks.timing import time_call


def _measure(data_dir: str, config: dict, workers: int, threads: int, batches: int, queue) -> None:
    """Child process: time `batches` batches after a first one; report rates and peak RSS."""
    from jdet.data.episodes import EpisodeConfig
    from jdet.data.pipeline import make_iterator

    cfg = EpisodeConfig(**config)
    it = make_iterator(
        data_dir,
        "train",
        cfg,
        seed=0,
        process_index=0,
        process_count=1,
        worker_count=workers,
        num_threads=threads,
    )
    timing = time_call(lambda: next(it), batches, sync=None)  # the first batch timed apart
    first, seconds = timing.first_s, timing.total_s
    it.close()
    del timing  # holds the last batch
    queue.put(
        {
            "first_s": first,
            "episodes_per_s": batches * cfg.episodes_per_batch / seconds,
            "images_per_s": batches * cfg.episodes_per_batch * cfg.queries_per_episode / seconds,
            "main_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        }
    )


def _run_isolated(*args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(*args, queue))
    process.start()
    try:
        result = queue.get(timeout=1800)
    finally:
        process.join()
    return result


def _prepare(args, tmp: pathlib.Path, log) -> tuple[str, dict]:
    """(data_dir to read: given, built from --src, or built from a synthetic dataset; build
    numbers), logging what it generates and builds."""
    if args.data_dir:
        return args.data_dir, {}
    from jdet.data import tfds_builder, tfds_source

    src = args.src
    if src is None:
        from jdet.data import synthetic

        width, height = (int(v) for v in args.size.lower().split("x"))
        generated = time_call(
            lambda: synthetic.generate(
                tmp / "raw", args.videos, 0, frames=args.frames, width=width, height=height
            ),
            0,
            sync=None,
        )
        src = generated.last
        log(
            f"generated {args.videos} synthetic videos of {args.frames} frames "
            f"{width}x{height} in {generated.first_s:.1f} s"
        )
    built = time_call(
        lambda: tfds_builder.build_dataset(src, tmp / "tfds", val_fraction=0.2, seed=0),
        0,
        sync=None,
    )
    result, seconds = built.last, built.first_s
    frames = sum(result.num_examples[tfds_source.FRAMES].values())
    log(
        f"build (validate + decode + JPEG + ArrayRecord): {frames} frames in {seconds:.1f} s "
        f"= {frames / seconds:.0f} frames/s"
    )
    return str(tmp / "tfds"), {"build_frames": frames, "build_frames_per_s": frames / seconds}


def _episode_config(args):
    from jdet.data.episodes import EpisodeConfig

    return EpisodeConfig(query_size=args.query_size, episodes_per_batch=args.episodes_per_batch)


def measure_data(args, log=print) -> dict:
    """The pipeline table's numbers for `args`: {"rows": [{workers, threads, first_s,
    episodes_per_s, images_per_s, main_rss_mib, worker_rss_mib}], build numbers}; `log` gets
    the generation and build lines."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    cfg = _episode_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, build = _prepare(args, pathlib.Path(tmp), log)
        rows = [
            {"workers": workers, "threads": args.threads}
            | _run_isolated(data_dir, dataclasses.asdict(cfg), workers, args.threads, args.batches)
            for workers in (int(w) for w in args.workers.split(","))
        ]
    return {"rows": rows, **build}


def bench_data(args) -> None:
    """Print the pipeline table for `args` (see `add_arguments`)."""
    cfg = _episode_config(args)
    result = measure_data(args)
    print(
        f"\npipeline: {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"CPUs; query {cfg.query_size}², support {cfg.support_size}², "
        f"{cfg.n_way}-way {cfg.k_shot}-shot {cfg.q_query}-query, "
        f"{cfg.episodes_per_batch} episode(s) per batch, mosaic p {cfg.mosaic_prob}, "
        f"{args.batches} timed batches\n"
    )
    print(
        "| workers | threads/process | first batch s | episodes/s | query images/s "
        "| peak RSS main MiB | peak RSS worker MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(
            f"| {r['workers']} | {r['threads']} | {r['first_s']:.2f} | "
            f"{r['episodes_per_s']:.2f} | {r['images_per_s']:.1f} | "
            f"{r['main_rss_mib']:.0f} | {r['worker_rss_mib']:.0f} |"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="an existing build (skips generation)")
    parser.add_argument("--src", help="a raw challenge-layout split to build first")
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos")
    parser.add_argument("--frames", type=int, default=80, help="frames per synthetic video")
    parser.add_argument("--size", default="320x192", help="synthetic frame WIDTHxHEIGHT")
    parser.add_argument("--query-size", type=int, default=320)
    parser.add_argument("--episodes-per-batch", type=int, default=1)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per row")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--threads", type=int, default=2, help="reader threads per process")
