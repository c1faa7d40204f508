"""Checkpoint I/O with orbax.

Converted weights (`scripts/convert_weights.py`) are saved as an orbax pytree plus a
`jdet_meta.json` saying what they are, and loaded back for `config.init`. Training runs use
`RunCheckpoints`: an orbax CheckpointManager under workdir/checkpoints/<step>/ holding the
TrainState pytree (step, params, batch_stats, opt_state, wiou_state), the data-iterator state
and the resolved config (both JSON); the last N are kept, saves are asynchronous.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jdet import distributed

META = "jdet_meta.json"
TREE = "variables"

# orbax's default array handler on CPU is "replica-parallel": every replicated array is split
# between its replicas for writing, which slices it on device with one small jit(slice)
# compilation per array shape and replica at the first save (560 compilations, 29 s for
# configs/tiny.py on 8 CPU devices, again in every new process). jdet's arrays are replicated
# (data parallelism), so the first replica's devices write them whole, as orbax does on GPU.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
)


def save_variables(
    path: str | pathlib.Path, variables: dict[str, Any], meta: dict[str, Any]
) -> pathlib.Path:
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
    (path / META).write_text(
        json.dumps({**meta, "counts": counts}, indent=2, sort_keys=True) + "\n"
    )
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


def save_best(
    path: str | pathlib.Path, variables: dict[str, Any], meta: dict[str, Any]
) -> pathlib.Path:
    """Replace the weights folder `path` (e.g. workdir/best) with `variables` + `meta`.

    Written beside it first and swapped in by renames, so a crash leaves either the old or the
    new folder whole (a leftover `<name>.old` is the previous best).
    """
    import shutil

    path = pathlib.Path(path).absolute()
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    save_variables(tmp, variables, meta)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


def best_value(path: str | pathlib.Path) -> float | None:
    """The metric value recorded in a `save_best` folder, or None when there is none."""
    meta_path = pathlib.Path(path) / META
    if not meta_path.exists():
        return None
    return float(json.loads(meta_path.read_text())["value"])


STATE, DATA, CONFIG = "state", "data", "config"


def state_tree(state: Any) -> dict[str, Any]:
    """The checkpointed part of a `jdet.steps.TrainState` (its arrays, not its callables)."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "wiou_state": state.wiou_state,
    }


class RunCheckpoints:
    """CheckpointManager for one run directory: save/restore state + data state + config."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        # orbax syncs the processes with device collectives here and in saves, which give up
        # on a peer after 30 s on CPU (Gloo): meet at a coordination-service barrier first.
        distributed.barrier("checkpoint-manager")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, DATA, CONFIG)
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, config: dict) -> None:
        """Start an (asynchronous) save of step `step`."""
        distributed.barrier("checkpoint-save")
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.StandardSave(state_tree(state)),
                    DATA: ocp.args.JsonSave(data_state),
                    CONFIG: ocp.args.JsonSave(config),
                }
            ),
        )

    def restore(self, state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """(state with the saved arrays, data-iterator state, step); `state` (arrays or
        jax.ShapeDtypeStructs with shardings) gives structure, shapes and shardings."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(_abstract, state_tree(state))
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(target), DATA: ocp.args.JsonRestore()}
            ),
        )
        return state.replace(**out[STATE]), out[DATA], step

    def restore_params(self, step: int | None = None) -> dict[str, Any]:
        """{"params", "batch_stats"} of a checkpoint as host arrays (for `config.init`).

        Works whatever device count saved it: the target is built from the checkpoint's
        metadata on this process's first device (restoring without a target reuses the saved
        shardings and fails on another topology)."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        with ocp.StandardCheckpointer() as reader:
            meta = reader.metadata(self.directory / str(step) / STATE)
        meta = getattr(meta, "item_metadata", meta)
        meta = getattr(meta, "tree", meta)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), meta
        )
        tree = self.manager.restore(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)})
        )
        return jax.device_get({k: tree[STATE][k] for k in ("params", "batch_stats")})

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x  # already abstract


def find_checkpoints(path: str | pathlib.Path) -> pathlib.Path | None:
    """The checkpoint-manager folder for `path`: a run directory (path/checkpoints) or the
    manager folder itself; None when neither holds a checkpoint."""
    path = pathlib.Path(path).absolute()
    for candidate in (path / "checkpoints", path):
        if candidate.is_dir() and any(p.name.isdigit() for p in candidate.iterdir()):
            return candidate
    return None


# Where a converted weights folder's tree sits inside RefDet's variables (by meta["kind"]).
INIT_PREFIX = {"yolo": "backbone", "dinov2": "support_encoder", "dinov3": "support_encoder"}


def load_init_variables(path: str | pathlib.Path) -> tuple[dict[str, Any], str]:
    """(variables, prefix) for `config.init`: a weights folder (scripts/convert_weights.py;
    prefix = the RefDet submodule it belongs to) or a run / checkpoint folder (prefix "")."""
    path = pathlib.Path(path).absolute()
    if (path / META).exists():
        variables, meta = load_variables(path)
        return variables, INIT_PREFIX.get(meta.get("kind"), "")
    ckpts = find_checkpoints(path)
    if ckpts is None:
        raise FileNotFoundError(
            f"init={path} is neither a jdet weights folder ({META}) nor a run directory or "
            "checkpoint folder with numbered checkpoints"
        )
    manager = RunCheckpoints(ckpts, async_save=False)
    try:
        return manager.restore_params(), ""
    finally:
        manager.close()


def graft(
    target: dict[str, Any], source: dict[str, Any], prefix: str = ""
) -> tuple[dict, int, list[str]]:
    """Copy the leaves of `source` into `target` (nested dicts) under `prefix` ("a/b").

    Leaves are matched by path; a source leaf whose path is missing in target or whose shape
    differs is left out and named in the returned list. Returns (new target, number of leaves
    copied, skipped paths).
    """
    flat_target = _flatten(target)
    copied, skipped = 0, []
    for path, value in _flatten(source).items():
        full = f"{prefix}/{path}" if prefix else path
        if full in flat_target and np.shape(flat_target[full]) == np.shape(value):
            flat_target[full] = np.asarray(value, dtype=np.asarray(flat_target[full]).dtype)
            copied += 1
        else:
            skipped.append(full)
    return _unflatten(flat_target), copied, skipped


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree
