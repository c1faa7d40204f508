"""jdet's XLA:CPU defaults (jdet/_xla_defaults.py): when they apply, and that they take effect."""

import os
import subprocess
import sys

import pytest

from jdet import _xla_defaults as xd


def test_flag_added_only_when_user_left_it_unset():
    assert xd.cpu_flags_to_add({}, "0.10.2") == [xd.YNN_FLAG]
    assert xd.cpu_flags_to_add({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, "0.10.2") == [xd.YNN_FLAG]
    # the user's own YNNPACK setting wins, whatever it is
    assert xd.cpu_flags_to_add({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}, "0.10.2") == []
    # opt-out, and jaxlib versions where it was not measured
    assert xd.cpu_flags_to_add({"JDET_XLA_DEFAULTS": "0"}, "0.10.2") == []
    assert xd.cpu_flags_to_add({}, "0.11.0") == []


def test_apply_appends_and_keeps_user_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    added = xd.apply(env) if xd.cpu_flags_to_add(env) else []
    if not added:
        pytest.skip("jaxlib version outside the measured range")
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {xd.YNN_FLAG}"
    assert xd.apply(env) == []  # idempotent: the flag is now there


_PROBE = """
import jdet, jax, jax.numpy as jnp, os
x = jnp.ones((2, 16, 16, 32)); w = jnp.ones((3, 3, 32, 32))
f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
print(jax.jit(f).lower(x, w).compile().as_text().count("__ynn_fusion"), os.environ.get("XLA_FLAGS", ""))
"""


@pytest.mark.skipif(not xd.cpu_flags_to_add({}), reason="jaxlib version outside the measured range")
def test_import_takes_convolutions_off_ynnpack():
    def run(**extra):
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JDET_XLA_DEFAULTS")}
        env.update(extra, JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
        count, _, flags = out.stdout.strip().partition(" ")
        return int(count), flags

    count, flags = run()
    assert xd.YNN_FLAG in flags and count == 0
    off_count, off_flags = run(JDET_XLA_DEFAULTS="0")
    assert off_flags == "" and off_count >= 1  # XLA's default: the convolution is a YNNPACK fusion
