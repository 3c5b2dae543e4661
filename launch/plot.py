"""Figures from workdirs: `python launch/plot.py --workdir=runs/indicator [--workdir=runs/clipped ...]`.

One workdir: its training curves (and pass@k / strategy figures when eval.json exists) go to
WORKDIR/figures. Several: one overlay figure per curve, one line per workdir, in --out.
"""

import json
import os

from absl import flags

from dora_jax import pipeline
from dora_jax.eval import plots

_WORKDIR = flags.DEFINE_multi_string("workdir", [], "Run directory holding metrics.jsonl; repeat to overlay.")
_OUT = flags.DEFINE_string("out", None, "Figure directory (default: WORKDIR/figures, or runs/overlay).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    runs = {os.path.basename(os.path.normpath(w)): plots.read_metrics(w) for w in _WORKDIR.value}
    out = _OUT.value or (os.path.join(_WORKDIR.value[0], "figures") if len(runs) == 1 else "runs/overlay")
    written = plots.plot_curves(runs, out)
    eval_path = os.path.join(_WORKDIR.value[0], "eval.json")
    if len(runs) == 1 and os.path.exists(eval_path):
        with open(eval_path) as f:
            written += plots.plot_eval(json.load(f), out)
    print("\n".join(written))


if __name__ == "__main__":
    pipeline.launch(main)
