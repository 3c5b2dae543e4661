"""Nora, the exploitation policy: GRPO from pi_ref on problems the SFT corpus never contained.

    python launch/train.py --config=configs/nora_grpo.py --workdir=runs/nora

GRPO raises pass@1 and collapses each problem's strategy distribution (pass@8 falls on
problems only rare strategies solve). `configs/indicator.py` builds and caches it when missing.

`:smollm` trains Nora from the packaged SmolLM2-135M-Instruct on generated word problems (a CPU, minutes).
`:math` trains Nora from a local reasoning model on DeepScaleR-format data (docs/design.md §7):

    python launch/train.py --config=configs/nora_grpo.py:math --config.ref_dir=R1_DISTILL_1P5B_DIR \
        --config.task.train_data=deepscaler.jsonl --config.task.eval_data=aime2025.jsonl
"""

from configs import common, ref_sft


def get_config(arg=None):
    c = common.get_config()
    c.name = "nora"
    c.policy_init = "ref"
    c.build.ref = ref_sft.get_config(common.build_arg(arg))

    # Objective
    c.objective = common.objective("grpo")
    c.objective.beta_kl = 0.0  # no pull toward ref: let the collapse happen, as RL fine-tuning does

    # Optimizer: 3e-4 is stable here; 1e-3 collapses to invalid output.
    c.optim.lr = 3e-4

    # Trainer
    c.trainer.num_steps = 150
    c.trainer.checkpoint_every = 50
    if "smollm" in common.variants(arg):  # SmolLM2-135M on word problems (docs/real_model.md)
        c.optim.lr = 2e-5
        c.trainer.num_steps = 30
    c = common.finish(c, arg)
    if "math" in common.variants(arg):
        c.objective.beta_kl = 0.001  # DeepScaleR's k3 KL weight: keeps long-horizon GRPO near the reference
    return c
