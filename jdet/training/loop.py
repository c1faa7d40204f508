"""The training loop: `train_and_evaluate(config, workdir)` → `TrainResult` (docs/design.md §2).

Data parallel over all devices of all processes (`jdet.distributed`): a ("data",) mesh, the
batch sharded on "data", the TrainState replicated, one `jax.jit(train_step)` with donated
state, compiled once (the gradient check reuses it); batches are read and copied to the
devices ahead of the step (`jdet.training.feed.DevicePrefetch`). Resume order: the latest checkpoint
in workdir → `config.resume` → `config.init` (params only) → scratch; the step RNG is
`fold_in(root, step)` and the data iterator's position is checkpointed, so a resumed run
continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from jdet import checkpoint, distributed
from jdet.config import episode_config, loss_config, loss_weights, optim_config
from jdet.data.episodes import EpisodeConfig
from jdet.data.pipeline import make_iterator
from jdet.data.prepare import eval_samples, prepare_data_once
from jdet.models import build_model, onednn_conv
from jdet.models.refdet import refdet_param_groups
from jdet.training import diagnostics
from jdet.training.diagnostics import (
    CheckReport,
    CompileCounter,
    check_first_batch,
    nan_injector,
)
from jdet.training.feed import DevicePrefetch, as_host
from jdet.training.optim import learning_rate_schedule, make_optimizer
from jdet.training.periodic_eval import Evaluator
from jdet.training.plots import plot_run
from jdet.training.run_log import MetricsWriter, train_record, truncate_after
from jdet.training.steps import create_train_state, train_step


@dataclasses.dataclass
class TrainResult:
    """What `train_and_evaluate` did.

    `check` holds the first-batch report of a ``--check`` run (which trains no step);
    `ok` is what the command's exit status says: the check passed, or training was not stopped
    by non-finite steps.
    """

    step: int  # the state's step at the end
    state: Any  # the final TrainState (replicated over the devices)
    origin: str  # "from scratch", "resumed from ... at step N", "initialised params from ..."
    conv: str  # the convolution implementation the model traced to ("oneDNN 3.2.0", "XLA")
    last: dict[str, Any] | None = None  # the last logged training record (metrics.jsonl)
    eval: dict[str, Any] | None = None  # the last evaluation record
    stopped: str = ""  # why training stopped early ("" when it ran to train.total_steps)
    plots: list[str] = dataclasses.field(default_factory=list)
    compiles: int = 0  # XLA compilations of the train step: 1 ahead of time + any later (0)
    check: CheckReport | None = None

    @property
    def ok(self) -> bool:
        return self.check.ok if self.check is not None else not self.stopped


def make_mesh(batch_size: int) -> tuple[jax.sharding.Mesh, Any, Any]:
    """(mesh, replicated sharding, batch sharding) over all devices of all processes."""
    n = jax.device_count()
    if batch_size % n:
        raise ValueError(
            f"train.batch_size={batch_size} is not divisible by the {n} devices: choose a "
            f"multiple of {n} (each device takes an equal share of the batch)"
        )
    mesh = distributed.data_mesh()
    P = jax.sharding.PartitionSpec
    return mesh, jax.NamedSharding(mesh, P()), jax.NamedSharding(mesh, P("data"))


def process_episode_config(ecfg: EpisodeConfig) -> EpisodeConfig:
    """What this process reads: its share of every global batch's episodes."""
    count = jax.process_count()
    if ecfg.episodes_per_batch % count:
        raise ValueError(
            f"a batch holds {ecfg.episodes_per_batch} episode(s) (train.batch_size / "
            f"(data.n_way·data.q_query)), which {count} processes cannot share: make it a "
            f"multiple of {count}"
        )
    return dataclasses.replace(ecfg, episodes_per_batch=ecfg.episodes_per_batch // count)


def initial_state(config, model, example: dict, workdir: pathlib.Path, repl):
    """(state, data_state or None, source): the resume order of docs/design.md §2."""
    rng = jax.random.PRNGKey(config.seed)
    params_shape = jax.eval_shape(lambda: model.init(rng, example))["params"]
    groups = refdet_param_groups(params_shape, config.model.frozen_blocks)
    tx = make_optimizer(optim_config(config), params_shape, groups)
    create = jax.jit(lambda b: create_train_state(model, tx, rng, b), out_shardings=repl)
    for source in (workdir / "checkpoints", config.resume):
        folder = checkpoint.find_checkpoints(source) if source else None
        if folder is not None:
            # Restoring needs only the structure, shapes and shardings (no init compile).
            target = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                jax.eval_shape(create, example),
            )
            manager = checkpoint.RunCheckpoints(folder, async_save=False)
            try:
                state, data_state, step = manager.restore(target)  # warns past damaged ones
                if folder == workdir / "checkpoints" and step != manager.latest_step():
                    for path in manager.set_aside_after(step):
                        print(f"jdet: set aside the damaged checkpoint {path}", flush=True)
            finally:
                manager.close()
            return state, data_state, f"resumed from {folder} at step {step}"
    state = distributed.run_once(create, example, name="init")  # compiled for compile speed
    if config.init:
        return _init_params(config, state, tx, repl), None, f"initialised params from {config.init}"
    return state, None, "from scratch"


def _init_params(config, state, tx, repl):
    """`config.init`: graft a weights folder or another run's params (+ BatchNorm statistics)
    into the fresh state; the optimiser starts anew."""
    variables, prefix = checkpoint.load_init_variables(config.init)
    host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    total = 0
    for collection in ("params", "batch_stats"):
        if not variables.get(collection):
            continue
        host[collection], copied, skipped = checkpoint.graft(
            host[collection], variables[collection], prefix
        )
        total += copied
        if skipped:
            print(
                f"init: {len(skipped)} {collection} leaves of {config.init} do not fit the "
                f"model and were left out (first: {skipped[:3]})",
                flush=True,
            )
    if total == 0:
        raise ValueError(f"init={config.init}: no parameter fits this model (prefix {prefix!r})")
    params = jax.device_put(host["params"], repl)
    return state.replace(
        params=params,
        batch_stats=jax.device_put(host["batch_stats"], repl),
        opt_state=jax.jit(tx.init, out_shardings=repl)(params),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, check_only: bool = False
) -> TrainResult:
    """Train `config` in `workdir` (see the module docstring).

    check_only: run the first batch only (expected loss at init + per-term gradient check);
    the result's `check.ok` is False when a term or gradient is not finite or a term is more
    than 2× off what uniform logits give.

    Multi-process (`config.distributed`, jdet.distributed): every process runs this with the
    same config and workdir; process 0 alone logs and writes all but the checkpoints.
    """
    distributed.initialize(config.get("distributed"))
    main = distributed.is_main()
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    if main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    ecfg = episode_config(config)
    _, repl, data_sharding = make_mesh(config.train.batch_size)
    local_ecfg = process_episode_config(ecfg)
    onednn_conv.prepare(config.model.get("conv") or None)  # first run: built beside the data
    data_dir = prepare_data_once(config, workdir)
    iterator = make_iterator(
        data_dir,
        "train",
        local_ecfg,
        seed=config.seed,
        worker_count=config.data.worker_count,
        num_threads=config.data.num_threads,
    )
    first = as_host(next(iterator))
    example = distributed.global_batch(first, data_sharding)
    model = build_model(config)
    state, data_state, origin = initial_state(config, model, example, workdir, repl)
    if data_state is not None and main:  # resumed: forget what was logged after that checkpoint
        for name in ("metrics.jsonl", "grad_checks.jsonl"):
            truncate_after(workdir / name, int(state.step))
    iterator.set_state(
        data_state or {"position": 0, "signature": iterator.get_state()["signature"]}
    )
    conv = model.impl.describe()
    if main:
        print(
            f"jdet: {origin}; {jax.device_count()} device(s) ({jax.devices()[0].platform}) in "
            f"{jax.process_count()} process(es); convolutions: {conv}",
            flush=True,
        )
    root_rng = jax.random.PRNGKey(config.seed + 1)
    lcfg, weights = loss_config(config), loss_weights(config)
    if check_only:
        iterator.close()
        report = check_first_batch(config, state, first, example, root_rng, lcfg, workdir)
        return TrainResult(int(state.step), state, origin, conv, check=report)
    try:
        result = _loop(config, workdir, model, state, iterator, root_rng, lcfg, weights, repl)
    finally:
        iterator.close()
    return dataclasses.replace(result, origin=origin, conv=conv)


_APPLY, _GRADIENTS_ONLY = np.bool_(False), np.bool_(True)


def _step(state, batch, rng, weights, gradients_only, *, loss_cfg):
    """`train_step` with its loss weights and `gradients_only` as (traced) arguments."""
    return train_step(
        state, batch, rng, loss_weights=weights, loss_cfg=loss_cfg, gradients_only=gradients_only
    )


def _weighted_grads(step_fn, state, batch, rng, train_weights):
    """weights → (terms, gradient of Σ weights·terms) on this state and batch, by the compiled
    step (`gradients_only`, on a copy of the state, which the step consumes): what
    `grads.per_term_grads_by_weights` calls once per term. Weights it is not given are 0."""

    def weighted(weights):
        full = {k: np.float32(weights.get(k, 0.0)) for k in train_weights}
        scratch = jax.tree.map(jnp.copy, state)
        out, metrics = step_fn(scratch, batch, rng, full, _GRADIENTS_ONLY)
        return {k: metrics[f"{k}_loss"] for k in weights}, out.params

    return weighted


def _term_names(step_fn, weights) -> list[str]:
    """The loss terms the compiled step reports (a `<term>_loss` metric each), in order."""
    metrics = step_fn.out_info[1]
    return sorted(k for k in weights if f"{k}_loss" in metrics)


def _loop(config, workdir, model, state, iterator, root_rng, lcfg, weights, repl) -> TrainResult:
    data_sharding = jax.NamedSharding(repl.mesh, jax.sharding.PartitionSpec("data"))
    # One compiled step, the loss weights and `gradients_only` as arguments: the gradient
    # check calls it with one-hot weights and gradients_only=True, so it compiles nothing of
    # its own (docs/design.md §2.9).
    jitted_step = jax.jit(
        functools.partial(_step, loss_cfg=lcfg),
        in_shardings=(repl, data_sharding, repl, repl, repl),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
    train_weights = {k: np.float32(v) for k, v in weights.items()}
    step_fn, recompiles = None, CompileCounter()
    lr_at = learning_rate_schedule(optim_config(config))
    t, dbg = config.train, config.debug
    main = distributed.is_main()
    ckpts = checkpoint.RunCheckpoints(workdir / "checkpoints", keep=t.keep_ckpts)
    writer = MetricsWriter(workdir) if main else None
    config_dict = json.loads(config.to_json_best_effort())
    start = int(state.step)
    bad_steps, last_record, last_eval, stopped = 0, None, None, ""
    samples = eval_samples(config, workdir) if main else None
    evaluator = samples and Evaluator.create(config, workdir, state, model, samples)
    bar = tqdm(
        total=t.total_steps,
        initial=start,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not main,
    )
    tick, tick_step = time.perf_counter(), start
    feed = DevicePrefetch(
        iterator,
        data_sharding,
        depth=config.data.device_prefetch,
        start_step=start,
        transform=nan_injector(dbg.inject_nan_steps),
    )
    try:
        for step in range(start, t.total_steps):
            fed = next(feed)
            batch = fed.device
            every = dbg.grad_check_every
            if step_fn is None:  # compiled once, ahead of its first run (all processes)
                step_fn = distributed.compile_synchronized(
                    jitted_step, state, batch, root_rng, train_weights, _APPLY, name="train-step"
                )
            if every >= 0 and (step == 0 or (every and step % every == 0)):
                diagnostics.grad_check(
                    state,
                    batch,
                    jax.random.fold_in(root_rng, step),
                    lcfg,
                    workdir,
                    step,
                    write=main,
                    weighted_grads=_weighted_grads(step_fn, state, batch, root_rng, train_weights),
                    term_names=_term_names(step_fn, weights),
                )
            with recompiles:  # a compiled step cannot recompile: it would raise instead
                state, metrics = step_fn(state, batch, root_rng, train_weights, _APPLY)
            done = step + 1
            if dbg.check_nans:  # the one per-step host sync; debug.check_nans=False drops it
                if int(metrics["skipped"]):
                    bad_steps += 1
                    diagnostics.dump_nan(
                        workdir,
                        step,
                        fed.host,
                        batch,
                        state,
                        jax.random.fold_in(root_rng, step),
                        lcfg,
                    )
                    if bad_steps >= dbg.max_bad_steps:
                        stopped = f"{bad_steps} consecutive non-finite steps (debug.max_bad_steps)"
                        break
                else:
                    bad_steps = 0
            if done % t.log_every_steps == 0 or done == t.total_steps:
                host = jax.device_get(metrics)
                last_record = train_record(done, host, lr_at(step))
                if writer is not None:
                    writer.write(last_record)
                now = time.perf_counter()
                rate = (done - tick_step) * t.batch_size / max(now - tick, 1e-9)
                tick, tick_step = now, done
                bar.set_postfix(loss=f"{last_record['train/loss']:.4g}", img_s=f"{rate:.1f}")
            bar.update(1)
            if done % t.ckpt_every_steps == 0 or done == t.total_steps:
                ckpts.save(done, state, fed.data_state, config_dict)
            eval_now = done == t.total_steps or (
                t.eval_every_steps and done % t.eval_every_steps == 0
            )
            if evaluator and eval_now:
                last_eval = evaluator(state, done, final=done == t.total_steps)
                writer.write(last_eval)
                bar.write(evaluator.summary_line(last_eval))
            if eval_now:  # the other processes wait for process 0's evaluation
                distributed.barrier("evaluation")
    finally:
        feed.close()
        bar.close()
        ckpts.wait()
        ckpts.close()
        if writer is not None:
            writer.close()
    if stopped and main:
        print(f"stopped: {stopped}", flush=True)
    plots = plot_run(workdir) if main else []
    if evaluator:
        plots += evaluator.plots
    return TrainResult(
        step=int(state.step),
        state=state,
        origin="",
        conv="",
        last=last_record,
        eval=last_eval,
        stopped=stopped,
        plots=[str(p) for p in plots],
        compiles=int(step_fn is not None) + recompiles.count,
    )
