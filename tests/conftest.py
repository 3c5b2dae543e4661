"""Test-wide JAX settings: strict rank promotion (STYLE.md), a small CPU footprint, one compilation cache."""

import atexit
import os
import shutil
import tempfile

import pytest

from tests import xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(8))  # 8 simulated CPU devices for the sharding tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # figures are written to files only
# Many tests compile the same small programs (the smoke model's sampler and update step), in this process and in
# the launchers they start: one on-disk XLA cache for the session, inherited by subprocesses, compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="dora_jax_tests_xla_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_platforms", "cpu")


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory):
    """One `config.cache_dir` for the session: the smoke Ref and Nora (the notebook's, the pipeline tests') and the
    converted packaged SmolLM2 are built once and read by every test that needs them."""
    return tmp_path_factory.mktemp("builds") / "cache"


def pytest_collection_modifyitems(items):
    """Scheduling for `pytest -n 2` (pytest.ini sets `--dist=loadgroup`); without xdist only the order changes.

    Tests marked `slow` run first, so no worker is left with a long test at the end. A worker runs a whole test
    module (its module fixtures are built once), except a slow test, which is scheduled on its own; every test that
    reads the session's `build_cache` runs on one worker, which builds its Ref and Nora once. An explicit
    `xdist_group` mark wins."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the suite's order otherwise
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if "build_cache" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("build_cache"))
        elif not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
