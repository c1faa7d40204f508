"""Checkpoint I/O with orbax.

Converted weights (`scripts/convert_weights.py`) are saved as an orbax pytree plus a
`jdet_meta.json` saying what they are, and loaded back for `config.init`. Training runs use
`RunCheckpoints`: an orbax CheckpointManager under workdir/checkpoints/<step>/ holding the
TrainState pytree (step, params, batch_stats, opt_state, wiou_state), the data-iterator state
and the resolved config (both JSON); the last N are kept, saves are asynchronous.

A run directory also holds `best/`, the weights of its best evaluation (`save_best`);
`load_run(path)` gives what inference needs from a run, a checkpoints folder or a weights
folder: the training config and the weights.
"""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from jdet import distributed

META = "jdet_meta.json"
TREE = "variables"
BEST = "best"  # workdir/best: the weights of the best evaluation so far (the trainer keeps it)

# orbax's default array handler on CPU is "replica-parallel": every replicated array is split
# between its replicas for writing, which slices it on device with one small jit(slice)
# compilation per array shape and replica at the first save (560 compilations, 29 s for
# configs/tiny.py on 8 CPU devices, again in every new process). jdet's arrays are replicated
# (data parallelism), so the first replica's devices write them whole, as orbax does on GPU.
_absl_level = absl_logging.get_verbosity()
absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns that the handler is overridden
try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
    )
finally:
    absl_logging.set_verbosity(_absl_level)


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
    """The checkpointed part of a `jdet.training.steps.TrainState`: its arrays, not its
    callables."""
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
        self.restored_step: int | None = None  # the step the last restore actually read

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
        jax.ShapeDtypeStructs with shardings) gives structure, shapes and shardings.

        Reads `step` (default: the latest); when that checkpoint cannot be read (a truncated
        or deleted file under checkpoints/<step>/), warns naming it and falls back to the next
        older one (see `_restore_newest`). The returned step is the one read."""
        target = jax.tree.map(_abstract, state_tree(state))

        def read(s: int) -> tuple[Any, dict]:
            out = self.manager.restore(
                s,
                args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardRestore(target), DATA: ocp.args.JsonRestore()}
                ),
            )
            return state.replace(**out[STATE]), out[DATA]

        (restored, data_state), step = self._restore_newest(step, read)
        return restored, data_state, step

    def restore_params(self, step: int | None = None) -> dict[str, Any]:
        """{"params", "batch_stats"} of a checkpoint as host arrays (for `config.init`).

        Works whatever device count saved it: the target is built from the checkpoint's
        metadata on this process's first device (restoring without a target reuses the saved
        shardings and fails on another topology). Falls back to older checkpoints like
        `restore`; `self.restored_step` says which step was read."""
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def read(s: int) -> dict[str, Any]:
            with ocp.StandardCheckpointer() as reader:
                meta = reader.metadata(self.directory / str(s) / STATE)
            meta = getattr(meta, "item_metadata", meta)
            meta = getattr(meta, "tree", meta)
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), meta
            )
            tree = self.manager.restore(
                s, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)})
            )
            return jax.device_get({k: tree[STATE][k] for k in ("params", "batch_stats")})

        return self._restore_newest(step, read)[0]

    def set_aside_after(self, step: int) -> list[pathlib.Path]:
        """Rename the checkpoints newer than `step` (damaged ones a resume fell back past) to
        `<step>.damaged`, so that the resumed run saves those steps again (orbax skips a save
        at or below its latest step). Process 0 renames; returns the new paths."""
        moved = []
        for s in sorted(self.manager.all_steps()):
            if s > step and distributed.is_main():
                target = self.directory / f"{s}.damaged"
                (self.directory / str(s)).rename(target)
                moved.append(target)
        distributed.barrier("checkpoint-set-aside")
        self.manager.reload()
        return moved

    def _restore_newest(self, step: int | None, read: Any) -> tuple[Any, int]:
        """(read(s), s) for the newest readable step s <= `step` (default: the latest).

        A checkpoint that fails to read (damaged or missing files, bad metadata) gives a
        RuntimeWarning naming checkpoints/<s> and the error, and the next older step is tried.
        FileNotFoundError when there is no checkpoint; ValueError naming the folder and every
        error when none can be read."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            steps = [step] + [s for s in steps if s < step]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failures = []
        for i, s in enumerate(steps):
            try:
                result = read(s)
            except Exception as err:  # noqa: BLE001 - any read error: try an older one
                reason = " ".join(f"{type(err).__name__}: {err}".split())
                reason = reason.split(" [tensorstore_spec")[0]  # drop tensorstore's JSON spec
                if len(reason) > 500:
                    reason = reason[:500] + " ..."
                failures.append((s, reason, err))
                later = (
                    f"falling back to the previous checkpoint (step {steps[i + 1]})"
                    if i + 1 < len(steps)
                    else "no older checkpoint is left"
                )
                warnings.warn(
                    f"checkpoint {self.directory / str(s)} is damaged or unreadable "
                    f"({reason}); {later}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            self.restored_step = s
            return result, s
        tried = "; ".join(f"step {s}: {reason}" for s, reason, _ in failures)
        raise ValueError(
            f"{self.directory}: no checkpoint can be read (all {len(failures)} are damaged or "
            f"unreadable): {tried}"
        ) from failures[0][2]

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


# ----------------------------------------------------------------------------- load a run


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; names the path and what is wrong."""

    def __init__(self, path: str | pathlib.Path, reason: str):
        self.path = str(path)
        super().__init__(f"{path}: {reason}")


def _config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))


def load_run(path: str | pathlib.Path) -> tuple[ml_collections.ConfigDict, dict, str]:
    """(resolved config, {"params", "batch_stats"} host arrays, description) of `path`.

    path: a run directory (prefers `best/`, else the latest checkpoint), a `checkpoints/`
    folder, or a weights folder written by the trainer (`best/`). CheckpointError naming the
    path when it is none of these or cannot be read.
    """
    path = pathlib.Path(path).expanduser().absolute()
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    best = path / BEST if (path / BEST / META).exists() else None
    if best is None and (path / META).exists():
        best = path
    if best is not None:
        try:
            variables, meta = load_variables(best)
        except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged tree
            raise CheckpointError(best, f"cannot read the weights ({err})") from None
        if "config" not in meta:
            raise CheckpointError(best, "weights folder without a training config in its meta")
        desc = f"{best} (step {meta.get('step')}, {meta.get('metric')}={meta.get('value')})"
        return _config_from_json(json.dumps(meta["config"])), variables, desc
    folder = find_checkpoints(path)
    if folder is None:
        raise CheckpointError(
            path,
            "not a jdet run directory, checkpoints folder or weights folder (expected "
            "config.json + checkpoints/<step>/, or best/ with jdet_meta.json)",
        )
    config_path = next(
        (p / "config.json" for p in (path, folder.parent) if (p / "config.json").exists()), None
    )
    if config_path is None:
        raise CheckpointError(path, "config.json of the run is missing")
    manager = RunCheckpoints(folder, async_save=False)
    try:
        variables = manager.restore_params()  # the newest readable one (warns past damage)
        step = manager.restored_step
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(folder, f"cannot restore a checkpoint ({err})") from None
    finally:
        manager.close()
    return _config_from_json(config_path.read_text()), variables, f"{folder}/{step}"
