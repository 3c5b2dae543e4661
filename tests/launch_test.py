"""The launchers end a bad configuration with one line that names it: no traceback, nothing written."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("override, message", [
    ("--config.optim.lrr=1", "error: a --config override cannot be applied ('lrr' Did you mean \"lr\""),
    ("--config.rollout.top_p=3.0", "error: config.rollout.top_p=3.0: use a mass in (0, 1]"),
    ("--config.optim.lr=x", "FATAL Flags parsing error: flag --config.optim.lr=x"),
])
def test_a_bad_config_ends_in_one_line(override, message, tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "launch/train.py", "--config=configs/indicator.py:smoke", override,
                             f"--workdir={workdir}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not workdir.exists()


def test_eval_without_a_policy_says_how_to_name_one():
    result = subprocess.run([sys.executable, "launch/eval.py", "--config=configs/indicator.py:smoke"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode != 0
    assert "no policy to evaluate: pass --policy=NAME=DIR" in result.stderr
    assert "StopIteration" not in result.stderr and "non-None default" not in result.stderr


def test_help_lists_the_launchers_flags():
    result = subprocess.run([sys.executable, "launch/compare.py", "--helpshort"], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert "--seeds" in result.stdout and "--workdir" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Unknown command line flag" not in result.stderr
