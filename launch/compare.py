"""Methods side by side on the embedded task over several seeds: one table and one pass@k plot.

    python launch/compare.py --workdir=runs/compare          # the default methods, seeds 0, 1, 2
    python launch/compare.py --config=configs/indicator.py --config=configs/polyepo.py:pass_at_k --seeds=0

Every method runs through the same pipeline (sampler, scorer, trainer); per seed, Ref and Nora
are built once and shared. Writes WORKDIR/compare.md, WORKDIR/figures/compare_pass_at_k.png and
each run's own workdir under WORKDIR/seed=S/.
"""

from absl import app, flags

from dora_jax import pipeline

METHODS = ["configs/indicator.py", "configs/clipped.py", "configs/polyepo.py", "configs/polyepo.py:pass_at_k",
           "configs/polyepo.py:grpo_diversity"]
_CONFIGS = flags.DEFINE_multi_string("config", METHODS, "Config file[:variant], repeatable.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each builds its own Ref and Nora.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Output directory.")
_EVAL_SAMPLES = flags.DEFINE_integer("eval_samples", 32, "Samples per held-out problem (pass@k up to this k).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny configs (seconds per run), for tests.")


def main(argv):
    del argv
    pipeline.quiet_info_logs()
    specs = [s + (",smoke" if ":" in s else ":smoke") if _SMOKE.value else s for s in _CONFIGS.value]
    pipeline.compare(specs, [int(s) for s in _SEEDS.value], _WORKDIR.value, {"eval.samples": _EVAL_SAMPLES.value})


if __name__ == "__main__":
    app.run(main)
