"""Nora-distilled (paper §5.1): Nora fine-tuned on Dora's correct samples of strategies Nora rarely uses.

    python launch/train.py --config=configs/distill.py [--workdir=runs/distill]

Builds (or reuses from the cache) Ref, Nora and Dora (configs/indicator.py), samples Dora 8 times
on each RL-split problem, keeps the correct responses whose strategy Nora uses in < 25% of her own
samples on that problem (STaR filter + rarity), adds Nora's own correct samples (rehearsal), and
fine-tunes Nora on them by SFT. The report puts Nora-distilled's pass@k next to Nora's and
Dora+Nora's. About 1 minute with cached policies.
Variants: `:smoke` (tests), `:all_correct` (keep every correct sample, not only rare strategies).
Ablations: `--config.distill.nora_replay=False` (Dora's samples only), `--config.distill.rare_share=0`
(Nora's own samples only: what rehearsal alone does).
"""

from configs import common, indicator, nora_grpo, ref_sft
from dora_jax import sections
from dora_jax.rollout.sft import DistillConfig


def get_config(arg=None):
    c = common.get_config()
    c.name = "distill"
    c.policy_init = "nora"  # Nora is the student
    c.build.ref = ref_sft.get_config(common.build_arg(arg))
    c.build.nora = nora_grpo.get_config(common.build_arg(arg))
    c.build.teacher = indicator.get_config(common.build_arg(arg))  # Dora

    # Objective: masked next-token NLL of Dora's kept responses, 64 per update.
    common.sft(c, arg, batch_size=64)

    # Distillation: 8 Dora samples per training problem, kept when correct and, unless the variant is
    # `:all_correct`, of a strategy Nora uses in under a quarter of her own samples (DistillConfig's defaults).
    c.distill = sections.defaults(DistillConfig)
    c.distill.rare_only = "all_correct" not in common.variants(arg)
    # Rehearsal: Nora's own correct samples join the corpus. Without them, the few rare-strategy
    # samples (120 to 180 on the embedded task) are seen for 20 to 30+ epochs and Nora's pass@1 falls.
    c.distill.nora_replay = True

    # Optimizer: small steps, so Nora keeps what she knows while she learns the kept strategies.
    c.optim.lr = 1e-4
    c.optim.schedule = "cosine"

    # Trainer
    c.trainer.num_steps = 60
    c.trainer.checkpoint_every = 30
    return common.finish(c, arg, ("all_correct",))
