"""The build cache's lock: runs that share a cache_dir build an entry once, the others wait and reuse it."""

import os
import threading
import time

from dora_jax import cache


def test_a_second_builder_waits_for_the_first_and_then_finds_the_entry(tmp_path, capsys):
    entry = str(tmp_path / "cache" / "nora-0123456789")
    holding, release, seen = threading.Event(), threading.Event(), []

    def first():
        with cache.exclusive(entry):
            holding.set()
            release.wait()
            os.makedirs(entry)  # built
            seen.append("first built")

    def second():
        with cache.exclusive(entry):
            seen.append(f"second finds it built: {os.path.isdir(entry)}")

    builders = [threading.Thread(target=first)]
    builders[0].start()
    holding.wait()

    def unlocked():
        with cache.exclusive(entry, enabled=False):  # the processes of one multi-process run never wait
            seen.append("unlocked")

    free = threading.Thread(target=unlocked)
    free.start()
    free.join(timeout=600)  # the bound only guards against a hang
    assert not free.is_alive(), "enabled=False waited for the lock"
    builders.append(threading.Thread(target=second))
    builders[1].start()
    out, deadline = "", time.monotonic() + 600  # polled, not timed: the bound only guards against a hang
    while "Waiting for another run" not in out and builders[1].is_alive() and time.monotonic() < deadline:
        out += capsys.readouterr().out
        time.sleep(0.01)
    out += capsys.readouterr().out
    assert f"Waiting for another run that is building {entry}." in out
    assert seen == ["unlocked"]  # the second is still waiting
    release.set()
    for builder in builders:
        builder.join()
    assert seen == ["unlocked", "first built", "second finds it built: True"]
    assert sorted(os.listdir(tmp_path / "cache")) == [".nora-0123456789.lock", "nora-0123456789"]  # the lock: hidden


def test_build_once_builds_a_missing_entry_and_then_reads_it(tmp_path):
    entry, calls = str(tmp_path / "cache" / "ref-0123456789"), []

    def build():
        calls.append("built")
        os.makedirs(entry)

    assert cache.build_once(entry, lambda: os.path.isdir(entry), build)
    assert not cache.build_once(entry, lambda: os.path.isdir(entry), build)
    assert calls == ["built"]
