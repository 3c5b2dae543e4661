"""The build cache: policies the pipeline trained for other runs, kept under `config.cache_dir`.

A config names how to build the policies it needs (`config.build.ref`, `.nora`, `.teacher`). A
built policy lives in `CACHE_DIR/<name>-<hash of its config>/policy`, so a later run with the same
building config reuses it, and any change to that config (a seed, a learning rate) builds anew.
Single-process runs that share a cache_dir and start together build each entry once: the others wait
for it (`build_once`).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import os

POLICY_DIR = "policy"  # the trained policy, exported as a model checkpoint inside the workdir
ROLES = ("ref", "nora", "teacher")  # what `config.build` may hold; `config.<role>_dir` receives the build


def cache_key(config) -> str:
    """Hash of everything that changes a built policy (not where it is cached or how progress is shown)."""
    c = copy.deepcopy(config)
    c.cache_dir, c.trainer.progress = "", True
    for part in with_builds(c):  # runs after a build do not change it
        if "alongside" in part:
            with part.unlocked():  # launch/train.py locks the config (and deepcopy keeps the lock)
                del part["alongside"]
    return hashlib.sha256(c.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:10]


def build_workdir(build_config, cache_dir: str) -> str:
    """Where the policy of `build_config` is (or will be) built."""
    root = os.path.abspath(os.path.expanduser(cache_dir))
    return os.path.join(root, f"{build_config.name}-{cache_key(build_config)}")


def with_builds(config) -> list:
    """The config and every config nested in its `build` section, recursively."""
    out = [config]
    for built in config.build.values():
        out += with_builds(built)
    return out


def reseed(config, seed: int) -> None:
    """Sets `seed` in the config and in the configs that build its policies: each seed is an independent pipeline."""
    for target in with_builds(config):
        target.seed = seed


@contextlib.contextmanager
def exclusive(path: str, enabled: bool = True):
    """Holds an exclusive lock (the hidden file `.NAME.lock` beside entry `path`) while the entry is built or
    converted: a run that needs the same entry meanwhile waits, then finds it built. Callers check for a finished
    entry first, so a read-only cache still serves its hits. `enabled=False` where the caller's processes build the
    entry together (a multi-process run), as one of them must not wait for the others; such a run does not lock
    out other runs either. Where the filesystem has no `flock`, the build goes on without the lock, with a warning."""
    if not enabled:
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
    with open(lock_path, "a") as f:  # closing the file releases the lock (as does the process's death)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"Waiting for another run that is building {path}.", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:  # e.g. a Lustre or FUSE mount without flock
            print(f"Warning: cannot lock {lock_path} ({e}); building without the lock.", flush=True)
        yield


def build_once(path: str, is_built, build, enabled: bool = True) -> bool:
    """Calls `build()` unless `is_built()`, under `exclusive(path, enabled)`; whether this call built the entry.
    `is_built` is checked before the lock (a read-only cache serves its hits) and again under it (another run may
    have built the entry while this one waited)."""
    if is_built():
        return False
    with exclusive(path, enabled):
        if is_built():
            return False
        build()
        return True
