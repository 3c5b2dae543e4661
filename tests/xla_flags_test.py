"""`import dora_jax` sets XLA's CPU dot flags, but never over the user's own and not when told not to."""

import os
import subprocess
import sys

import jax
import pytest

import dora_jax


def _flags_after_import(**env) -> str:
    code = "import os, dora_jax; print(os.environ.get('XLA_FLAGS', ''))"
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DORA_JAX_XLA_CPU_DEFAULTS")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(jax.__version_info__[:3] < (0, 10, 2), reason="this jaxlib does not know the flags")
def test_flags_are_added_to_the_users_and_never_override_them():
    assert _flags_after_import().split() == list(dora_jax._XLA_CPU_FLAGS)
    assert _flags_after_import(XLA_FLAGS="--xla_force_host_platform_device_count=2").split() == [
        "--xla_force_host_platform_device_count=2", *dora_jax._XLA_CPU_FLAGS]
    own = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert _flags_after_import(XLA_FLAGS=own) == own
    assert _flags_after_import(DORA_JAX_XLA_CPU_DEFAULTS="0") == ""
