"""Multi-process data parallelism (jdet.distributed) and device prefetch (jdet.training.feed).

The end-to-end test launches `python -m jdet.train` as 2 processes × 4 virtual CPU devices
(Gloo collectives over localhost) and checks that 2 training steps end on the parameters the
same config reaches in 1 process × 8 devices.
"""

import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from jdet import distributed
from jdet.distributed import DistributedConfig
from jdet.training.feed import DevicePrefetch
from jdet.training.run_log import read_jsonl

pytestmark = [pytest.mark.heavy(7), pytest.mark.xdist_group("tiny-run")]

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Configuration and environment
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"mode": "sometimes"}, "distributed.mode"),
        ({"coordinator_address": "node0"}, "host:port"),
        ({"num_processes": 2, "process_id": 2}, "process_id=2"),
        ({"cpu_devices": -1}, "cpu_devices"),
        ({"local_device_ids": "0;1"}, "local_device_ids"),
    ],
)
def test_config_errors_name_the_field(fields, field):
    with pytest.raises(ValueError, match=field):
        DistributedConfig(**fields).validate()


@pytest.mark.parametrize(
    "fields, environ, expected",
    [
        ({}, {}, False),
        ({}, {"JAX_COORDINATOR_ADDRESS": "node0:1234"}, True),
        ({"coordinator_address": "localhost:1234"}, {}, True),
        ({}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, True),
        ({}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),  # one task: no runtime
        ({}, {"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({"mode": "off"}, {"JAX_COORDINATOR_ADDRESS": "node0:1234"}, False),
        ({"mode": "on"}, {}, True),
    ],
)
def test_when_the_runtime_is_joined(fields, environ, expected):
    assert distributed.wanted(DistributedConfig(**fields), environ) is expected


def test_single_process_initialize_is_a_noop_and_late_requests_fail_clearly():
    assert distributed.initialize({}) is False  # this pytest process: 8 devices, 1 process
    assert distributed.initialize({"cpu_devices": jax.local_device_count()}) is False
    with pytest.raises(RuntimeError, match="already started with 8 CPU devices"):
        distributed.initialize({"cpu_devices": 4})
    with pytest.raises(RuntimeError, match="single-process mode"):
        distributed.initialize({"coordinator_address": "localhost:1"})


def test_data_mesh_and_global_batch_on_one_process():
    mesh = distributed.data_mesh()
    assert mesh.devices.shape == (jax.device_count(),) and mesh.axis_names == ("data",)
    sharding = jax.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    local = {"x": np.arange(16, dtype=np.float32).reshape(8, 2)}
    batch = distributed.global_batch(local, sharding)
    assert batch["x"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])
    assert distributed.is_main()
    distributed.barrier("noop")  # one process: returns at once


def test_run_once_compiler_options_reach_xla_and_keep_the_random_draws():
    """Parameter initialisation is compiled with `run_once_compiler_options` (on CPU: LLVM
    level 0); the options reach XLA and the draws match the default build to float32
    rounding."""
    assert distributed.run_once_compiler_options("cpu")["xla_backend_optimization_level"] == 0
    assert distributed.run_once_compiler_options("gpu") == {}

    def init(key):
        k1, k2 = jax.random.split(key)
        return {
            "kernel": jax.random.truncated_normal(k1, -2.0, 2.0, (3, 3, 16, 8)) * 0.1,
            "embed": jax.random.normal(k2, (64, 33)),
            "uniform": jax.random.uniform(key, (100,)),
        }

    key = jax.random.PRNGKey(0)
    fast = jax.jit(init)
    options = distributed.run_once_compiler_options()
    got = distributed.compile_synchronized(fast, key, name="init", compiler_options=options)(key)
    for name, ref in fast(key).items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-6, atol=1e-7, err_msg=name)
    with pytest.raises(Exception, match="xla_no_such_option"):  # the options are not ignored
        distributed.compile_synchronized(fast, key, compiler_options={"xla_no_such_option": 1})


def test_run_once_falls_back_when_xla_lacks_the_options(monkeypatch):
    monkeypatch.setattr(distributed, "run_once_compiler_options", lambda: {"xla_no_such_option": 1})
    x = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(distributed.run_once(jax.jit(lambda a: a * 2), x), x * 2)


# ---------------------------------------------------------------------------------------------
# Device prefetch
# ---------------------------------------------------------------------------------------------


class _Counting:
    """A minimal EpisodeIterator stand-in: batch i is all i; state = batches produced."""

    def __init__(self, stop: int | None = None, fail_at: int | None = None):
        self.position, self.stop, self.fail_at = 0, stop, fail_at
        self.threads: set[str] = set()

    def __next__(self):
        self.threads.add(threading.current_thread().name)
        if self.position == self.fail_at:
            raise OSError(f"corrupt record at batch {self.position}")
        if self.position == self.stop:
            raise StopIteration
        self.position += 1
        return {"x": np.full((8, 2), self.position - 1, np.float32)}

    def get_state(self):
        return {"position": self.position}


def _sharding():
    return jax.NamedSharding(distributed.data_mesh(), jax.sharding.PartitionSpec("data"))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_yields_batches_in_order_with_their_own_iterator_state(depth):
    source = _Counting()

    def nan_at_2(step, host):
        return dict(host, x=host["x"] * np.nan) if step == 2 else host

    with DevicePrefetch(source, _sharding(), depth=depth, start_step=0, transform=nan_at_2) as feed:
        items = [next(feed) for _ in range(5)]
    assert [f.step for f in items] == [0, 1, 2, 3, 4]
    # The state saved with batch i resumes after it, however far the thread has read ahead.
    assert [f.data_state["position"] for f in items] == [1, 2, 3, 4, 5]
    for f in items:
        assert f.device["x"].sharding == _sharding()
        np.testing.assert_array_equal(np.asarray(f.device["x"]), f.host["x"])
        if f.step != 2:
            assert (f.host["x"] == f.step).all()
    assert np.isnan(items[2].host["x"]).all()
    assert ("jdet-prefetch" in source.threads) == (depth > 0)


def test_prefetch_reraises_reader_errors_and_ends_with_the_iterator():
    with DevicePrefetch(_Counting(fail_at=2), _sharding(), depth=2) as feed:
        next(feed), next(feed)
        with pytest.raises(OSError, match="corrupt record at batch 2"):
            next(feed)
    with DevicePrefetch(_Counting(stop=2), _sharding(), depth=2) as feed:
        assert len(list(feed)) == 2


def test_prefetch_close_stops_a_thread_blocked_on_a_full_queue():
    feed = DevicePrefetch(_Counting(), _sharding(), depth=1)
    next(feed)
    feed.close()
    assert not feed._thread.is_alive()


# ---------------------------------------------------------------------------------------------
# Two processes × 4 devices == one process × 8 devices
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# jax writes persistent compilation cache entries from process 0 only (so that processes do
# not write the same file), but on CPU every process's programs have keys of their own: when
# the 2 processes resume, process 1 would compile its train step again (1–2 min in CI). They
# are therefore launched through this driver, which lets every process write its own
# entries (jax's compiler module sees process 0); otherwise it is `python -m jdet.train`.
EVERY_PROCESS_WRITES_CACHE = """
import sys
from jax._src import compiler
from jdet import train

state = compiler.distributed.global_state

class AsProcess0:
    process_id = 0
    def __getattr__(self, name):
        return getattr(state, name)

compiler.distributed = type(sys)("distributed_as_seen_by_the_compiler")
compiler.distributed.global_state = AsProcess0()
sys.argv[0] = "jdet.train"
sys.exit(train.main())
"""


def _launch(workdir, devices: int, process=0, processes=1, port=0, log_name=None):
    command = ["-c", EVERY_PROCESS_WRITES_CACHE] if processes > 1 else ["-m", "jdet.train"]
    args = [
        sys.executable, *command, "--config=configs/tiny.py", f"--workdir={workdir}",
        "--config.train.total_steps=3",  # a checkpoint after each step
        "--config.data.val_videos=0",  # tiny's batch of 8 = 2 episodes: one per process
        "--config.debug.grad_check_every=-1",
        f"--config.distributed.cpu_devices={devices}",
    ]  # fmt: skip
    if processes > 1:
        args += [
            f"--config.distributed.coordinator_address=localhost:{port}",
            f"--config.distributed.num_processes={processes}",
            f"--config.distributed.process_id={process}",
        ]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no forced device count
    cache = os.environ.get("JDET_TEST_CACHE", str(pathlib.Path.home() / ".cache/jdet/jax_tests"))
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache, TF_CPP_MIN_LOG_LEVEL="0")
    log_name = log_name or f"{workdir.name}.process{process}.log"
    log = (workdir.parent / log_name).open("w")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _params_at(workdir: pathlib.Path, step: int) -> dict:
    from jdet.checkpoint import RunCheckpoints

    manager = RunCheckpoints(workdir / "checkpoints", async_save=False)
    try:
        return manager.restore_params(step)
    finally:
        manager.close()


def _wait(jobs, tmp_path) -> dict[str, str]:
    try:
        codes = [job.wait(timeout=900) for job in jobs]
    finally:  # a hung run (e.g. a collective waiting on a dead peer) must not outlive the test
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.wait()
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    assert codes == [0] * len(jobs), "\n\n".join(f"== {k}\n{v[-3000:]}" for k, v in logs.items())
    return logs


@pytest.mark.slow
@pytest.mark.deep  # 6 min: the deep profile (docs/testing.md §4)
def test_two_processes_of_four_devices_train_like_one_of_eight(tmp_path):
    """3 steps in 2 processes and in 1, compared after steps 1 and 2; then the 2 processes
    resume from their step-2 checkpoint (orbax restore across processes, iterator position)
    and take step 3 again exactly as before."""
    two = tmp_path / "two"
    port = _free_port()
    jobs = [_launch(two, 4, p, 2, port) for p in range(2)]
    jobs.append(_launch(tmp_path / "one", 8))
    logs = _wait(jobs, tmp_path)

    assert "8 device(s) (cpu) in 2 process(es)" in logs["two.process0.log"]
    assert "device(s)" not in logs["two.process1.log"]  # process 0 alone logs
    one, two_records = (read_jsonl(w / "metrics.jsonl") for w in (tmp_path / "one", two))
    assert [r["step"] for r in two_records] == [1, 2, 3]
    # Step 1 saw the same global batch and the same initial weights: every loss term and the
    # global gradient norm agree to float32 rounding (the devices' partial sums are reduced in
    # another order by Gloo than in one process). Step 2 follows step 1's updates.
    for (a, b), rtol in zip(zip(one, two_records), (1e-5, 1e-3)):
        for key, value in a.items():
            np.testing.assert_allclose(b[key], value, rtol=rtol, atol=1e-9, err_msg=key)
    ref, got = _params_at(tmp_path / "one", 2), _params_at(two, 2)
    assert jax.tree.structure(ref) == jax.tree.structure(got)
    diff = np.concatenate(
        [np.abs(a - b).ravel() for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got))]
    )
    # AdamW moves a parameter by about lr (1e-3) per step whatever its gradient's size, so a
    # gradient entry at rounding-noise level (cancelling partial sums) can step either way in
    # the two runs: all entries lie within two steps' reach, 99.9 % agree to 1e-4 (measured:
    # 99.9 % within 7.7e-6, the largest difference 1.6e-3).
    assert diff.max() < 4.4e-3 and np.quantile(diff, 0.999) < 1e-4, (diff.max(), diff.mean())
    moved = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(_params_at(two, 1)), jax.tree.leaves(got))
    ]
    assert any(moved)  # and the second step did change them

    shutil.rmtree(two / "checkpoints" / "3")  # as if the run had died after step 2
    port = _free_port()
    jobs = [_launch(two, 4, p, 2, port, log_name=f"resume.process{p}.log") for p in (0, 1)]
    logs = _wait(jobs, tmp_path)
    assert f"resumed from {two / 'checkpoints'} at step 2" in logs["resume.process0.log"]
    resumed = read_jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    for key, value in two_records[2].items():  # the same step 3 as the uninterrupted run
        np.testing.assert_allclose(resumed[2][key], value, rtol=1e-6, atol=1e-12, err_msg=key)


def test_each_process_reads_its_share_of_the_episodes(monkeypatch):
    from configs import tiny
    from jdet.config import episode_config
    from jdet.training import loop as trainer

    ecfg = episode_config(tiny.get_config())  # batch 8 = 2 episodes of 2 ways × 2
    assert trainer.process_episode_config(ecfg).episodes_per_batch == 2
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert trainer.process_episode_config(ecfg).episodes_per_batch == 1
    with pytest.raises(ValueError, match="1 episode.*2 processes cannot share"):
        trainer.process_episode_config(dataclasses.replace(ecfg, episodes_per_batch=1))
    four = trainer.process_episode_config(dataclasses.replace(ecfg, episodes_per_batch=4))
    assert four.episodes_per_batch == 2


def test_config_validation_covers_the_distributed_section():
    from configs import tiny
    from jdet import config as common

    config = tiny.get_config()
    config.unlock()
    config.distributed.coordinator_address = "localhost"
    with pytest.raises(ValueError, match="distributed.coordinator_address must be host:port"):
        common.validate(config)
