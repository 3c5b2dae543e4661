"""Methods side by side on the embedded task over several seeds: one table and one pass@k plot.

    python launch/compare.py --workdir=runs/compare          # the default methods, seeds 0, 1, 2
    python launch/compare.py --config=configs/indicator.py --config=configs/polyepo.py:pass_at_k --seeds=0
    python launch/compare.py --config=configs/indicator.py:signed --seeds=0 --validation=300   # tuning, no held-out

Every method runs through the same pipeline (sampler, scorer, trainer); per seed, Ref and Nora
are built once and shared. Writes WORKDIR/compare.md, WORKDIR/figures/compare_pass_at_k.png and
each run's own workdir under WORKDIR/seed=S/.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from configs import indicator
from dora_jax import experiments, pipeline

# The paper's two formulations, the set-RL baselines, and the Dora that rediscovers what Nora forgot.
METHODS = ["configs/indicator.py", "configs/clipped.py", "configs/polyepo.py", "configs/polyepo.py:pass_at_k",
           "configs/polyepo.py:grpo_diversity", f"configs/indicator.py:{indicator.IMPROVED}"]
_CONFIGS = flags.DEFINE_multi_string("config", METHODS, "Config file[:variant], repeatable.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each builds its own Ref and Nora.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Output directory.")
_EVAL_SAMPLES = flags.DEFINE_integer("eval_samples", 32, "Samples per held-out problem (pass@k up to this k).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny configs (seconds per run), for tests.")
_VALIDATION = flags.DEFINE_integer("validation", 0, "Hold out this many RL problems and evaluate on them instead of "
                                   "the held-out split: for choosing hyperparameters (Ref and Nora are rebuilt).")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE applied to every method's config, e.g. trainer.stop_kl=0.")


def load(spec: str, smoke: bool = False):
    """(label, config) of `PATH/NAME.py[:VARIANT]`, loaded as `--config=` loads it; `smoke` adds the smoke variant."""
    path, _, variant = spec.partition(":")
    if not os.path.exists(path):
        raise app.UsageError(f"--config={spec!r}: no file {path!r}; write e.g. configs/polyepo.py:pass_at_k.")
    arg = ",".join(v for v in (variant, "smoke" if smoke else "") if v)
    config = config_flags.config_flags.ConfigFileFlagParser("config", lock_config=False).parse(path + (f":{arg}" if arg else ""))
    return os.path.splitext(os.path.basename(path))[0] + (f":{variant}" if variant else ""), config


def main(argv):
    del argv
    configs = dict(load(spec, _SMOKE.value) for spec in _CONFIGS.value)
    overrides = {"eval.samples": _EVAL_SAMPLES.value}
    if _VALIDATION.value:
        overrides.update({"task.validation_problems": _VALIDATION.value, "eval.split": "validation"})
    for item in _SET.value:
        field, eq, value = item.partition("=")
        if not eq:
            raise app.UsageError(f"--set={item!r}: write FIELD=VALUE, e.g. --set=trainer.stop_kl=0.")
        overrides[field] = value
    experiments.compare(configs, [int(s) for s in _SEEDS.value], _WORKDIR.value, overrides)


if __name__ == "__main__":
    pipeline.launch(main)
