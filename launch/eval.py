"""pass@k tables for any set of policies and their pairwise mixtures on the held-out problems.

    python launch/eval.py --config=configs/indicator.py --out=runs/eval \
        --policy=ref=runs/indicator/... --policy=nora=DIR --policy=dora=runs/indicator/policy

A policy is a dora_jax checkpoint (a workdir's `policy/`) or a Hugging Face directory. On real
math, evaluate on any AIME-format file:

    python launch/eval.py --config=configs/indicator.py:math --config.task.eval_data=aime2025.jsonl \
        --policy=nora=NORA_HF_DIR --policy=dora=runs/indicator_math/policy --out=runs/eval_aime

Writes OUT/eval.json, OUT/passk.md (pass@k for k = 1, 2, 4, ... up to config.eval.samples, per policy and
per pair mixed k/2 + k/2; with policies named ref and nora, the forgotten strategies and each policy's recovery)
and OUT/figures/{pass_at_k,strategies}.png, and prints the table.
"""

from absl import app, flags
from ml_collections import config_flags

from dora_jax import experiments, pipeline
from dora_jax.eval import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config giving the task and sampling settings.")
_POLICY = flags.DEFINE_multi_string("policy", None, "NAME=DIR, repeatable.")
_OUT = flags.DEFINE_string("out", "runs/eval", "Output directory.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    if not _POLICY.value:
        raise app.UsageError("no policy to evaluate: pass --policy=NAME=DIR (a workdir's policy/, a Hugging Face "
                             "dir, a .gguf file or packaged:smollm2), once per policy.")
    policies = {}
    for spec in _POLICY.value:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--policy={spec!r}: write it as NAME=DIR, e.g. --policy=nora=runs/nora/policy")
        policies[name] = path
    summary = experiments.evaluate_policies(_CONFIG.value, policies, _OUT.value)
    print("\n".join(report.passk_table(summary) + report.forgotten_section(summary)))
    print(f"Wrote {_OUT.value}/eval.json and {_OUT.value}/passk.md")


if __name__ == "__main__":
    pipeline.launch(main)
