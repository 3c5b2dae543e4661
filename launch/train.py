"""Trains one config end to end: `python launch/train.py --config=configs/indicator.py [--workdir=DIR]`.

Variants: `--config=configs/indicator.py:smoke`; overrides: `--config.optim.lr=1e-5`.
The default workdir is runs/<config name>[_<variant>].
"""

import os

from absl import app, flags
from ml_collections import config_flags

from dora_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/indicator.py[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumes if it holds checkpoints).")
flags.mark_flags_as_required(["config"])


def default_workdir(config_arg: str) -> str:
    path, _, variant = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", name + (f"_{variant.replace(',', '_')}" if variant else ""))


def main(argv):
    del argv
    pipeline.run(_CONFIG.value, _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename))


if __name__ == "__main__":
    app.run(main)
