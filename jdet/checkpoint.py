"""Checkpoint I/O with orbax.

For now: converted weights (`scripts/convert_weights.py`) saved as an orbax pytree plus a
`jdet_meta.json` saying what they are, and loaded back for `config.init`. The training
CheckpointManager (state, data iterator, config; last N + best) builds on this.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META = "jdet_meta.json"
TREE = "variables"


def save_variables(path: str | pathlib.Path, variables: dict[str, Any], meta: dict[str, Any]) -> pathlib.Path:
    """Write variables (e.g. {"params", "batch_stats"}) and a JSON description to `path`.

    The folder must not exist yet (never overwrite a checkpoint silently).
    """
    path = pathlib.Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new output folder or delete it")
    path.mkdir(parents=True)
    host = jax.tree.map(np.asarray, variables)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / TREE, host)
    counts = {k: int(sum(np.size(x) for x in jax.tree.leaves(v))) for k, v in host.items()}
    (path / META).write_text(json.dumps({**meta, "counts": counts}, indent=2, sort_keys=True) + "\n")
    return path


def load_variables(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, meta) from a folder written by `save_variables`."""
    path = pathlib.Path(path).absolute()
    meta_path = path / META
    if not meta_path.exists() or not (path / TREE).exists():
        raise FileNotFoundError(
            f"{path} is not a jdet weights folder (expected {META} and {TREE}/); "
            "create one with scripts/convert_weights.py"
        )
    meta = json.loads(meta_path.read_text())
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(path / TREE)
    return variables, meta
