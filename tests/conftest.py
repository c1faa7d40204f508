"""Test setup: 8 virtual CPU devices, fast compiles and the persistent compilation cache.

Both must be configured before jax is imported anywhere, so this module sets the environment
first. The cache folder can be moved with JDET_TEST_CACHE (CI points it inside its work area).
"""

import functools
import os
import pathlib
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# LLVM without optimisation: the same XLA programs (HLO passes are unchanged), compiled with
# ~40 % less CPU (measured on the tiny RefDet train step and YOLOv8 gradients), and the suite
# is mostly compiling. JDET_TEST_FULL_OPT=1 tests at the optimisation level users run.
_full_opt = os.environ.get("JDET_TEST_FULL_OPT", "0") == "1"
if not _full_opt and "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

_cache = pathlib.Path(
    os.environ.get("JDET_TEST_CACHE", pathlib.Path.home() / ".cache" / "jdet" / "jax_tests")
)
_cache.mkdir(parents=True, exist_ok=True)

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.helpers import FIXTURES  # noqa: E402

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
settings.register_profile("ci", max_examples=100, **_common)
settings.register_profile("dev", max_examples=30, **_common)
settings.register_profile("thorough", max_examples=10_000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


# Scheduling over the two xdist workers (`-n 2 --dist loadfile`, pyproject.toml): each test
# file is one unit of work (its module fixtures run once). Test files say what the scheduler
# needs with marks, so nothing here names a file:
# - `pytest.mark.heavy(minutes)` on a long module: units start longest first, so that neither
#   worker ends alone on a long file;
# - `pytest.mark.xdist_group(name)`: the modules of one group run as one unit, on one worker,
#   one after the other (heaviest first). The three files that train configs/tiny.py end to end
#   are the group "tiny-run": the later ones load the first one's compiled programs from the
#   persistent compilation cache instead of compiling them beside it.


def _heaviness(item) -> float:
    mark = item.get_closest_marker("heavy")
    return float(mark.args[0]) if mark else 0.0


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -_heaviness(item))  # stable: the rest keep their order


_GROUP_MARK = re.compile(r"""^pytestmark\s*=.*xdist_group\(\s*["']([^"']+)["']""", re.M)


@functools.cache
def _module_group(path: str) -> str | None:
    """The `xdist_group` name a test module's `pytestmark` line gives, or None. Read from the
    file: the scheduler runs in the controller, which sees node ids, not items."""
    match = _GROUP_MARK.search((pathlib.Path(__file__).parents[1] / path).read_text())
    return match.group(1) if match else None


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: no error when it is absent
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the modules of one `xdist_group` as one unit and units started in
    collection order (xdist would otherwise reorder them by their number of tests)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return _module_group(file) or file

    config.option.loadscopereorder = False
    return Scheduling(config, log)
