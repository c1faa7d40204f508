"""Running one measurement in a fresh Python process (compile times from nothing, its own peak
RSS), and the child side of it.

Parent: `run_in_child(kind, spec)` runs `python -m benchmarks _child KIND OUT SPEC_JSON` from
the repository root and returns the child's result dict, or {"error": its last lines}.
Child: `benchmarks.__main__` maps KIND to a measure function and calls `child_main`, which
writes measure(Namespace(**spec)) plus "peak_rss_mib" (ru_maxrss) as JSON to OUT.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable

CHILD = "_child"  # the hidden `python -m benchmarks` command of a child process
ROOT = pathlib.Path(__file__).resolve().parents[1]  # the checkout: `-m benchmarks` resolves here


def spec_of(args: argparse.Namespace) -> dict:
    """The JSON-able options of a parsed command line (what a child gets)."""
    return {
        k: v for k, v in vars(args).items() if v is None or isinstance(v, (bool, int, float, str))
    }


def run_in_child(kind: str, spec: dict) -> dict:
    """Run measurement `kind` on `spec` in a fresh process; its result, or {"error": …}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / f"{kind}.json"
        command = [sys.executable, "-m", "benchmarks", CHILD, kind, str(out), json.dumps(spec)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
        if done.returncode == 0 and out.exists():
            return json.loads(out.read_text())
    tail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
    return {"error": f"exit {done.returncode}: {tail}"}


def child_main(measure: Callable[[argparse.Namespace], dict], out: str, spec: str) -> None:
    """The child process: measure, add the process's peak RSS, write the JSON result."""
    result = measure(argparse.Namespace(**json.loads(spec)))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pathlib.Path(out).write_text(json.dumps(result))
