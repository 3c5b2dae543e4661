"""Methods side by side on the embedded task over several seeds: one table and one pass@k plot.

    python launch/compare.py --workdir=runs/compare          # the default methods, seeds 0, 1, 2
    python launch/compare.py --config=configs/indicator.py --config=configs/polyepo.py:pass_at_k --seeds=0

Every method runs through the same pipeline (sampler, scorer, trainer); per seed, Ref and Nora
are built once and shared. Writes WORKDIR/compare.md, WORKDIR/figures/compare_pass_at_k.png and
each run's own workdir under WORKDIR/seed=S/.
"""

import importlib
import os
import sys

from absl import app, flags

from dora_jax import experiments, pipeline
from dora_jax.sections import ConfigError

METHODS = ["configs/indicator.py", "configs/clipped.py", "configs/polyepo.py", "configs/polyepo.py:pass_at_k",
           "configs/polyepo.py:grpo_diversity"]
_CONFIGS = flags.DEFINE_multi_string("config", METHODS, "Config file[:variant], repeatable.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each builds its own Ref and Nora.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Output directory.")
_EVAL_SAMPLES = flags.DEFINE_integer("eval_samples", 32, "Samples per held-out problem (pass@k up to this k).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny configs (seconds per run), for tests.")


def load(spec: str, smoke: bool = False):
    """(label, config) of `configs/NAME.py[:VARIANT]` (the `configs` package); `smoke` adds the smoke variant."""
    path, _, variant = spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        module = importlib.import_module(f"configs.{name}")
    except ModuleNotFoundError:
        raise app.UsageError(f"--config={spec!r}: no configs/{name}.py; write e.g. configs/polyepo.py:pass_at_k.")
    arg = ",".join(v for v in (variant, "smoke" if smoke else "") if v)
    return name + (f":{variant}" if variant else ""), module.get_config(arg or None)


def main(argv):
    del argv
    pipeline.quiet_info_logs()
    configs = dict(load(spec, _SMOKE.value) for spec in _CONFIGS.value)
    try:
        experiments.compare(configs, [int(s) for s in _SEEDS.value], _WORKDIR.value,
                            {"eval.samples": _EVAL_SAMPLES.value})
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
