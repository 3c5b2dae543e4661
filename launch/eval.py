"""pass@k tables for any set of policies and their pairwise mixtures on the held-out problems.

    python launch/eval.py --config=configs/indicator.py --out=runs/eval \
        --policy=ref=runs/indicator/... --policy=nora=DIR --policy=dora=runs/indicator/policy

A policy is a dora_jax checkpoint (a workdir's `policy/`) or a Hugging Face directory.
Writes OUT/eval.json and OUT/figures/{pass_at_k,strategies}.png and prints the table.
"""

from absl import app, flags
from ml_collections import config_flags

from dora_jax import pipeline
from dora_jax.eval import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config giving the task and sampling settings.")
_POLICY = flags.DEFINE_multi_string("policy", [], "NAME=DIR, repeatable.")
_OUT = flags.DEFINE_string("out", "runs/eval", "Output directory.")
flags.mark_flags_as_required(["config", "policy"])


def main(argv):
    del argv
    policies = {}
    for spec in _POLICY.value:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--policy={spec!r}: write it as NAME=DIR, e.g. --policy=nora=runs/nora/policy")
        policies[name] = path
    summary = pipeline.evaluate_policies(_CONFIG.value, policies, _OUT.value)
    ks = sorted({int(k) for e in [*summary["policies"].values(), *summary["mixtures"].values()] for k in e["pass@k"]})
    print("| policy | " + " | ".join(f"pass@{k}" for k in ks) + " |")
    for name, e in [*summary["policies"].items(), *summary["mixtures"].items()]:
        print(f"| {name} | " + " | ".join(report.fmt(e["pass@k"].get(str(k))) for k in ks) + " |")
    print(f"Wrote {_OUT.value}/eval.json")


if __name__ == "__main__":
    app.run(main)
