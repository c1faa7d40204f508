"""Test setup: 8 virtual CPU devices and the persistent compilation cache.

Both must be configured before jax is imported anywhere, so this module sets the environment
first. The cache folder can be moved with JDET_TEST_CACHE (CI points it inside its work area).
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

_cache = pathlib.Path(
    os.environ.get("JDET_TEST_CACHE", pathlib.Path.home() / ".cache" / "jdet" / "jax_tests")
)
_cache.mkdir(parents=True, exist_ok=True)

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

# Hypothesis profiles. "ci" (default) keeps the suite quick; "thorough" is the documented deep
# run: HYPOTHESIS_PROFILE=thorough python3 -m pytest -q tests/test_properties.py
_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
settings.register_profile("ci", max_examples=300, **_common)
settings.register_profile("dev", max_examples=30, **_common)
settings.register_profile("thorough", max_examples=10_000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


# Scheduling over the two xdist workers (`-n 2 --dist loadfile`, pyproject.toml): each test
# file is one unit of work (its module fixtures run once), and the longest units start first
# so that neither worker ends alone on a long file. Longest first (measured in CI).
_LONG_FILES = (
    "test_train_robust.py",
    "test_train.py",
    "test_distributed.py",
    "test_refdet.py",
    "test_fast_path.py",
    "test_steps.py",
    "test_onednn_conv.py",
)
# Files run as one unit, on one worker, one after the other (in _LONG_FILES order): the tiny
# runs of test_train.py and test_distributed.py (its 1-process reference) compile the same
# programs as test_train_robust.py's reference run, so they find them in the persistent
# compilation cache instead of compiling them again beside it.
_SAME_WORKER = dict.fromkeys(("test_train_robust.py", "test_train.py", "test_distributed.py"),
                             "tiny-run")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: others keep order


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: no error when it is absent
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the `_SAME_WORKER` files as one unit and units started in
    collection order (xdist would otherwise reorder them by their number of tests)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return _SAME_WORKER.get(pathlib.PurePath(file).name, file)

    config.option.loadscopereorder = False
    return Scheduling(config, log)
