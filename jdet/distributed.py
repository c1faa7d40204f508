"""Multi-process runs on JAX's distributed runtime (`jax.distributed.initialize`).

One process per host (or per GPU), all running the same command; the train step is the same
jitted, sharded program as on one process (docs/design.md §2), so nothing else changes:

- `config.distributed` (or the environment) names the coordinator, the process count and this
  process's id; under SLURM or Open MPI `jax.distributed.initialize()` reads them itself.
- On CPU the processes' collectives run over Gloo (TCP), so a multi-process run can be tested
  on one machine: ``distributed.cpu_devices`` virtual CPU devices per process.
- Each process reads its own shard of every global batch (`jdet.data.pipeline`), which
  `global_batch` assembles into one array sharded over all devices.
- Checkpoints are written by orbax from every process into the shared workdir; logs, metrics,
  plots, evaluation and the best weights come from process 0 only (`is_main`).

``mode``: "auto" (default) initialises when a coordinator address is given (config or
JAX_COORDINATOR_ADDRESS) or a SLURM / Open MPI job has more than one task; "on" always
initialises (cluster auto-detection then must succeed); "off" never does.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

MODES = ("auto", "on", "off")
_SETTINGS = {"barrier_timeout_s": 3600}


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    mode: str = "auto"
    coordinator_address: str = ""  # host:port of process 0; "" = environment / cluster
    num_processes: int = 0  # 0 = environment (JAX_NUM_PROCESSES) / cluster
    process_id: int = -1  # -1 = environment (JAX_PROCESS_ID) / cluster
    local_device_ids: str = ""  # e.g. "0,1"; "" = all of this host's accelerators
    cpu_devices: int = 0  # virtual CPU devices per process (CPU runs); 0 = the default
    timeout_s: int = 300  # how long to wait for every process to join
    barrier_timeout_s: int = 3600  # how long processes wait for each other at a barrier

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> DistributedConfig:
        return cls(**dict(section or {}))

    def validate(self) -> None:
        """ValueError naming the field (config.distributed.*)."""
        if self.mode not in MODES:
            raise ValueError(f"distributed.mode must be one of {MODES}, got {self.mode!r}")
        if self.coordinator_address and ":" not in self.coordinator_address:
            raise ValueError(
                "distributed.coordinator_address must be host:port (e.g. node0:12345), got "
                f"{self.coordinator_address!r}"
            )
        if self.timeout_s < 1 or self.barrier_timeout_s < 1:
            raise ValueError("distributed.timeout_s and distributed.barrier_timeout_s must be >= 1")
        if self.num_processes < 0 or self.process_id < -1 or self.cpu_devices < 0:
            raise ValueError(
                "distributed.num_processes and distributed.cpu_devices must be >= 0 and "
                "distributed.process_id >= -1 (-1: from the environment)"
            )
        if self.num_processes and self.process_id >= self.num_processes:
            raise ValueError(
                f"distributed.process_id={self.process_id} must be < "
                f"distributed.num_processes={self.num_processes}"
            )
        ids = self.local_device_ids.replace(" ", "")
        if ids and not all(part.isdecimal() for part in ids.split(",")):
            raise ValueError(
                f'distributed.local_device_ids must look like "0,1", got {self.local_device_ids!r}'
            )


def _cluster_tasks(environ: Mapping[str, str]) -> int:
    """Number of tasks of a SLURM or Open MPI job this process belongs to (1 if none)."""
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        value = environ.get(name, "")
        if value.isdecimal():
            return int(value)
    return 1


def wanted(cfg: DistributedConfig, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `initialize` starts the distributed runtime under this config and environment."""
    environ = os.environ if environ is None else environ
    if cfg.mode != "auto":
        return cfg.mode == "on"
    return bool(cfg.coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS")) or (
        _cluster_tasks(environ) > 1
    )


def _backends_started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def _joined() -> bool:
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client is not None


def initialize(cfg: DistributedConfig | Mapping[str, Any] | None = None) -> bool:
    """Set up devices and, when `wanted`, join the distributed runtime; True if it did.

    Must run before anything touches a JAX device. Calling it again (or after the runtime was
    started elsewhere) is a no-op when it asks for nothing different.
    """
    if not isinstance(cfg, DistributedConfig):
        cfg = DistributedConfig.from_config(cfg)
    cfg.validate()
    _SETTINGS["barrier_timeout_s"] = cfg.barrier_timeout_s
    started = _backends_started()
    if cfg.cpu_devices:
        if not started:
            jax.config.update("jax_num_cpu_devices", cfg.cpu_devices)
        elif jax.devices()[0].platform == "cpu" and jax.local_device_count() != cfg.cpu_devices:
            raise RuntimeError(
                f"distributed.cpu_devices={cfg.cpu_devices}, but JAX already started with "
                f"{jax.local_device_count()} CPU devices in this process: set it before "
                "anything uses JAX (e.g. run through `python -m jdet.train`)"
            )
    if not wanted(cfg):
        return False
    if _joined() or (started and jax.process_count() > 1):
        return True  # already joined (by an earlier call or the launcher)
    if started:
        raise RuntimeError(
            "distributed training was requested (config.distributed or the environment), "
            "but JAX already started in single-process mode: initialise first (jdet.train "
            "does), or set distributed.mode=off"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    environ = os.environ
    num = cfg.num_processes or int(environ.get("JAX_NUM_PROCESSES", "0") or 0) or None
    pid = cfg.process_id if cfg.process_id >= 0 else environ.get("JAX_PROCESS_ID")
    ids = [int(i) for i in cfg.local_device_ids.replace(" ", "").split(",") if i] or None
    try:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address or None,
            num_processes=num,
            process_id=None if pid in (None, "") else int(pid),
            local_device_ids=ids,
            initialization_timeout=cfg.timeout_s,
        )
    except (ValueError, RuntimeError) as err:
        raise RuntimeError(
            f"could not join the distributed runtime ({err}). Set distributed."
            "coordinator_address, num_processes and process_id (or JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES, JAX_PROCESS_ID), run under SLURM/Open MPI, or set "
            "distributed.mode=off for one process"
        ) from err
    return True


def is_main() -> bool:
    """Process 0: the one that logs, evaluates and writes everything but checkpoints."""
    return jax.process_index() == 0


_BARRIER_COUNT = itertools.count()


def barrier(name: str, timeout_s: float | None = None) -> None:
    """Wait until every process reaches this point (no-op on one process).

    A barrier of the coordination service (no device collective), with a long timeout
    (`DistributedConfig.barrier_timeout_s`): processes may legitimately drift apart by
    minutes (process 0 building the dataset or evaluating, uneven compile times), while Gloo's
    CPU collectives give up on a peer after 30 s. All processes must call the same barriers
    in the same order.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    timeout = _SETTINGS["barrier_timeout_s"] if timeout_s is None else timeout_s
    barrier_id = f"jdet/{name}/{next(_BARRIER_COUNT)}"
    jax_distributed.global_state.client.wait_at_barrier(barrier_id, int(timeout * 1000))


def compile_synchronized(
    jitted: Any,
    *args: Any,
    name: str = "compiled",
    compiler_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """`jitted.lower(*args, **kwargs).compile(compiler_options)`, then a `barrier`: the
    program's first collective then starts on every process together, however long each took
    to compile. Call the result with the non-static arguments; jax's caches make a repeated
    compile of the same program free."""
    compiled = jitted.lower(*args, **kwargs).compile(dict(compiler_options or {}))
    barrier(name)
    return compiled


def run_once_compiler_options(platform: str | None = None) -> dict[str, Any]:
    """XLA options for a program that runs once and is cheap to run: parameter
    initialisation (hundreds of random-number kernels and nothing else once XLA has dropped
    the model's unused forward pass). On CPU: LLVM optimisation level 0 without its expensive
    passes. Measured on configs/tiny.py's initialisation (413 parameter arrays, 8 CPU devices,
    the 2-core VM): 27–31 → 14–17 s to compile and 0.07–0.11 → 0.21–0.29 s to run on a quiet
    machine, 69 → 29 s to compile beside another compiling process; the values are the same
    random draws to float32 rounding (≤ 3e-7 relative, in ~4 % of the entries). Other
    platforms: {} (not measured). Never for a program that runs many times: at level 0 the
    tiny model's per-term gradient program ran 15× slower (52 s against 3.5 s)."""
    platform = platform or jax.default_backend()
    if platform != "cpu":
        return {}
    return {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_once(jitted: Any, *args: Any, name: str = "run-once") -> Any:
    """``jitted(*args)``, compiled with `run_once_compiler_options` (all processes together,
    as `compile_synchronized`): for parameter initialisation, e.g.
    ``run_once(jax.jit(model.init), rng, batch)``."""
    options = run_once_compiler_options()
    try:
        compiled = compile_synchronized(jitted, *args, name=name, compiler_options=options)
    except jax.errors.JaxRuntimeError as err:  # an XLA without these options: compile as usual
        if "compile option" not in str(err):
            raise
        compiled = compile_synchronized(jitted, *args, name=name)
    return compiled(*args)


def data_mesh() -> jax.sharding.Mesh:
    """A 1-D ("data",) mesh over every device of every process, process by process, so a
    global batch is the processes' local batches concatenated in process order."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return jax.sharding.Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def global_batch(local: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
    """This process's share of a batch → arrays of the global batch sharded by `sharding`
    (on one process: a plain sharded device_put)."""
    if jax.process_count() == 1:
        return jax.device_put(dict(local), sharding)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }
