"""Where a finished run's Dora gate 1(lR > lN) opens, by kind of token (the strategy's choice or the rest).

    python launch/diagnose.py --workdir=runs/indicator [--batches=2]

Draws rollout batches from Nora and from the trained policy, scores them under Ref and Nora, prints the table
and writes WORKDIR/diagnose.md and WORKDIR/diagnose.json.
"""

import json
import os

from absl import app, flags

from dora_jax import experiments, pipeline
from dora_jax.eval import report

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's workdir (config.json and policy/).")
_BATCHES = flags.DEFINE_integer("batches", 2, "Rollout batches per policy.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    if not os.path.exists(os.path.join(_WORKDIR.value, "config.json")):
        raise app.UsageError(f"--workdir={_WORKDIR.value}: no config.json; point it at a finished run's workdir.")
    table = experiments.gate_by_token_kind(_WORKDIR.value, _BATCHES.value)
    text = report.gate_table(table)
    with open(os.path.join(_WORKDIR.value, "diagnose.md"), "w") as f:
        f.write(text)
    with open(os.path.join(_WORKDIR.value, "diagnose.json"), "w") as f:
        json.dump(table, f, indent=2)
    print(text)


if __name__ == "__main__":
    pipeline.launch(main)
