"""Test-wide JAX settings: strict rank promotion (STYLE.md), a small CPU footprint, one build cache."""

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

from tests import xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(8))  # 8 simulated CPU devices for the sharding tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # figures are written to files only


# No persistent XLA compilation cache: on simulated CPU devices, a multi-device program loaded from it can run its
# collectives in a different order on each device and deadlock (XLA aborts after 40 s; docs/design.md §5.5). Each
# process compiles its own programs.
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
# One build cache for the session, inherited by the `-n 2` workers and the processes tests start: the smoke Ref and
# Nora and the converted SmolLM2 are built once (dora_jax.cache locks an entry while it is built).
if "DORA_TEST_BUILD_CACHE" not in os.environ:
    os.environ["DORA_TEST_BUILD_CACHE"] = tempfile.mkdtemp(prefix="dora_jax_tests_builds_")
    atexit.register(shutil.rmtree, os.environ["DORA_TEST_BUILD_CACHE"], ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_platforms", "cpu")


@pytest.fixture(scope="session")
def build_cache():
    """One `config.cache_dir` for the session: the smoke Ref and Nora (the notebook's, the pipeline tests') and the
    converted packaged SmolLM2 are built once and read by every test that needs them."""
    return pathlib.Path(os.environ["DORA_TEST_BUILD_CACHE"]) / "cache"


def pytest_collection_modifyitems(items):
    """Tests marked `slow` run first (the suite's order otherwise). Under `pytest -n 2`, pytest.ini's
    `--dist=load --maxschedchunk=1` hands tests out one or two at a time in this order, so the slow ones start on
    both workers at once and no worker is left with one at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # a stable sort
