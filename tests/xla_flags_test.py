"""`import dora_jax` sets XLA's CPU dot flags, XLA accepts them, and they never override the user's."""

import os
import subprocess
import sys

import jaxlib.version
import pytest

import dora_jax

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _flags_after_import(**env) -> str:
    """XLA_FLAGS after `import dora_jax` in a fresh CPU process that then compiles and runs a matmul."""
    code = ("import os, dora_jax, jax, jax.numpy as jnp; jax.jit(lambda x: x @ x)(jnp.ones((2, 2))).block_until_ready(); "
            "print(os.environ.get('XLA_FLAGS', ''))")
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DORA_JAX_XLA_CPU_DEFAULTS")}
    return subprocess.run([sys.executable, "-c", code], env={**base, "JAX_PLATFORMS": "cpu", **env}, cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(jaxlib.version.__version_info__[:3] < (0, 10, 2), reason="this jaxlib does not know the flags")
def test_flags_are_added_to_the_users_and_never_override_them():
    assert _flags_after_import().split() == list(dora_jax._XLA_CPU_FLAGS)
    assert _flags_after_import(XLA_FLAGS="--xla_force_host_platform_device_count=2").split() == [
        "--xla_force_host_platform_device_count=2", *dora_jax._XLA_CPU_FLAGS]
    own = "--xla_cpu_use_xnnpack=true"
    assert _flags_after_import(XLA_FLAGS=own) == own
    assert _flags_after_import(DORA_JAX_XLA_CPU_DEFAULTS="0") == ""
    assert _flags_after_import(JAX_PLATFORMS="cpu,cuda") == ""
