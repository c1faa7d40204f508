"""The opt-in JDET_XLA_CPU_CONV=eigen (jdet/_xla_defaults.py): when it applies, that it works."""

import os
import subprocess
import sys

import pytest

from jdet import _xla_defaults as xd

ON = {xd.ENV: "eigen"}


def test_flag_added_only_on_request_and_when_user_left_it_unset():
    assert xd.cpu_flags_to_add({}, "0.10.2") == []  # default: XLA's own choice
    assert xd.cpu_flags_to_add(ON, "0.10.2") == [xd.YNN_FLAG]
    assert xd.cpu_flags_to_add(
        {**ON, "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, "0.10.2"
    ) == [xd.YNN_FLAG]
    # the user's own YNNPACK setting wins, whatever it is
    assert (
        xd.cpu_flags_to_add(
            {**ON, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}, "0.10.2"
        )
        == []
    )
    assert xd.cpu_flags_to_add(ON, "0.11.0") == []  # not measured there
    with pytest.raises(ValueError, match="JDET_XLA_CPU_CONV"):
        xd.cpu_flags_to_add({xd.ENV: "eign"}, "0.10.2")


def test_apply_appends_and_keeps_user_flags():
    env = {**ON, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    if not xd.cpu_flags_to_add(env):
        pytest.skip("jaxlib version outside the measured range")
    assert xd.apply(env) == [xd.YNN_FLAG]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {xd.YNN_FLAG}"
    assert xd.apply(env) == []  # idempotent: the flag is now there


_PROBE = """
from jdet import _xla_defaults
_xla_defaults.apply()  # what the jdet commands do first
import jax, jax.numpy as jnp, os
x = jnp.ones((2, 16, 16, 32)); w = jnp.ones((3, 3, 32, 32))
dn = ("NHWC", "HWIO", "NHWC")
f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
hlo = jax.jit(f).lower(x, w).compile().as_text()
print(hlo.count("__ynn_fusion"), os.environ.get("XLA_FLAGS", ""))
"""


@pytest.mark.skipif(not xd.cpu_flags_to_add(ON), reason="jaxlib version outside the measured range")
def test_commands_take_convolutions_off_ynnpack_on_request():
    def run(**extra):
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xd.ENV)}
        env.update(extra, JAX_PLATFORMS="cpu")
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
        )
        count, _, flags = out.stdout.strip().partition(" ")
        return int(count), flags

    count, flags = run(**ON)
    assert xd.YNN_FLAG in flags and count == 0
    default_count, default_flags = run()
    assert default_flags == "" and default_count >= 1  # XLA's default: a YNNPACK fusion
