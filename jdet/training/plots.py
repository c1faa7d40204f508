"""Training plots (matplotlib, Agg) → workdir/plots/: loss curves and per-term gradient norms."""

from __future__ import annotations

import pathlib

from jdet.evaluation.plots import pyplot
from jdet.training.run_log import read_jsonl


def plot_run(workdir: str | pathlib.Path) -> list[pathlib.Path]:
    """Write plots/losses.png (from metrics.jsonl) and plots/grad_norms.png (from
    grad_checks.jsonl); returns the files written."""
    plt = pyplot()
    workdir = pathlib.Path(workdir)
    out = workdir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    records = read_jsonl(workdir / "metrics.jsonl")
    if records:
        fig, ax = plt.subplots(figsize=(7, 4))
        keys = sorted(
            {k for r in records for k in r if k.startswith("train/") and k.endswith("loss")}
        )
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
            if pts:
                ax.plot(*zip(*pts), label=key.removeprefix("train/"), marker=".")
        ax.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "losses.png", dpi=100)
        plt.close(fig)
        written.append(out / "losses.png")
    checks = read_jsonl(workdir / "grad_checks.jsonl")
    if checks:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = sorted({n for c in checks for n in c["terms"]})
        for name in names:
            pts = [(c["step"], c["terms"][name]["grad_norm"]) for c in checks if name in c["terms"]]
            ax.plot(*zip(*pts), label=name, marker="o")
        ax.set(
            xlabel="step", ylabel="gradient norm", yscale="symlog", title="per-term gradient norms"
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "grad_norms.png", dpi=100)
        plt.close(fig)
        written.append(out / "grad_norms.png")
    return written
