"""Dora, paper Formulation 2 (the indicator objective), initialised from Nora: the main job.

    python launch/train.py --config=configs/indicator.py [--workdir=runs/indicator]

On the embedded default, a missing pi_ref (configs/ref_sft.py) and Nora (configs/nora_grpo.py)
are built first and cached under config.cache_dir. The run writes metrics, samples, eval.json,
report.md (the paper's Tables 1-2 analogues) and figures/ to the workdir. With `:side_by_side` the improved
variant `:from_ref,grpo,nora_reward,spare_rare,ref_guide` (GRPO from Ref on rewards scaled by Nora's failure
rate on each problem, except in the rare strategies, with up to 2 of Ref's correct answers in each group) then
trains on the same Ref and Nora in WORKDIR/alongside/improved, and report.md ends with both side by side
(docs/results.md, "Rediscovering forgotten strategies").
Variants: `:smoke` (seconds, for tests), `:beta_sweep` (beta in 0.01, 0.1, 1 with overlays),
`:signed` (psi = exp(A / beta) - 1), `:sequence` (the response's log pi_ref / pi_nora as gate and log-ratio),
`:complement` (PPO reinforcing only correct responses Ref favours more than Nora), `:pass_at_k` (the pass@k
set advantage in place of GRPO's), `:poly_epo` (Poly-EPO's set advantage in place of GRPO's: mean reward x
distinct strategies of 4-response subsets), `:grpo` (plain GRPO), `:nora_reward` (rewards times Nora's failure
rate on the problem, from 8 of her samples), `:nora_strategy_reward` (rewards times 1 - the share of 8 of Nora's
samples that are correct in the response's own strategy: a correct answer by a strategy she does not use keeps its
full reward), `:nora_mode_reward` (rewards times 1 - the share of Nora's correct samples over the whole batch
that use the response's strategy: her modes are discounted everywhere), `:spare_rare` (with one of those rewards:
responses in the task's rare strategies keep their whole reward), `:nora_guide` (up to 2 rows of each
group are Nora's correct samples of the prompt, trained on as if Dora had drawn them), `:ref_guide` (the same with
Ref's correct samples, from 8 of Ref's per prompt), `:from_ref` (Dora starts from Ref, uncapped); they combine,
e.g. `:from_ref,grpo,nora_reward`,
`:handover` (paper §5.2: responses alternate between Dora and Nora every 2 tokens; Dora learns on hers),
`:smollm` (a real pretrained model on a CPU: SmolLM2-135M-Instruct from its package, Nora built by GRPO,
about 50 minutes on 2 cores from nothing; docs/real_model.md),
`:seeds` (seeds 0, 1, 2 with a mean ± std table), `:side_by_side` (the improved Dora after this one, above),
`:math` (real math, the paper's setting: delta 2, beta 1, group size 8; local files and models):

    python launch/train.py --config=configs/indicator.py:math --config.ref_dir=R1_DISTILL_1P5B_DIR \
        --config.nora_dir=runs/nora_grpo_math/policy --config.task.train_data=deepscaler.jsonl \
        --config.task.eval_data=aime2025.jsonl

Memory per device: `python launch/plan.py --config=configs/indicator.py:math --config.ref_dir=...`
(docs/scaling.md lists the figures for 1.5B and 7B models).
"""

from configs import common, nora_grpo, ref_sft

# The improved Dora: the variant `:side_by_side` trains after this one, and launch/compare.py runs.
IMPROVED = "from_ref,grpo,nora_reward,spare_rare,ref_guide"
# The complementarity rewards other than the per-problem one, by the objective.nora_reward_by they set.
_NORA_REWARD_BY = {"nora_strategy_reward": "strategy", "nora_mode_reward": "modes"}


# Every variant this config reads (besides the shared ones, configs/common.py).
VARIANTS = ("side_by_side", "beta_sweep", "signed", "sequence", "complement", "grpo", "pass_at_k", "poly_epo",
            "from_ref", "nora_reward", "nora_strategy_reward", "nora_mode_reward", "spare_rare", "nora_guide",
            "ref_guide", "handover")


def _at_most_one(variants: set, names: tuple, what: str, arg) -> str | None:
    """The one of `names` among `variants` (None if none); two of them is an error."""
    chosen = [name for name in names if name in variants]
    if len(chosen) > 1:
        raise ValueError(f"configs/indicator.py:{arg}: choose one of the {what}: {', '.join(names)}.")
    return chosen[0] if chosen else None


def get_config(arg=None):
    c = common.get_config()
    c.name = "dora"
    c.policy_init = "nora"
    c.build.ref = ref_sft.get_config(common.build_arg(arg))
    c.build.nora = nora_grpo.get_config(common.build_arg(arg))

    # Objective: S = E[1(lR - lN > 0) lD C(psi (lR - lN), delta)], psi = exp(A / beta).
    c.objective.loss = "dora_indicator"
    c.objective.beta = 1.0
    c.objective.delta = 2.0

    # Optimizer
    c.optim.lr = 2e-5

    # Trainer
    c.trainer.num_steps = 60
    # Past ~0.3 nats Dora's held-out accuracy and validity fall fast (docs/results.md, "Stability").
    c.trainer.stop_kl = 0.3
    if "beta_sweep" in common.variants(arg):
        c.sweep = "objective.beta=0.01,0.1,1"
    if "smollm" in common.variants(arg):  # SmolLM2-135M on word problems (docs/real_model.md)
        c.optim.lr = 1e-5
        c.trainer.num_steps = 15
        c.eval.noise_check = True  # Ref drawn twice: the report shows how far two evaluations of one model differ
    # Beyond the paper (docs/results.md, "Rediscovering forgotten strategies"); one change each, combinable:
    v = common.variants(arg)
    if "signed" in v:  # psi = exp(A / beta) - 1: a wrong sample's Ref-favoured tokens are pushed down
        c.objective.psi_form = "signed"
    if "sequence" in v:  # the gate and log-ratio of the whole response, log pi_ref(y) / pi_nora(y)
        c.objective = common.objective("dora_sequence", keep=c.objective)
    if "complement" in v:  # PPO whose positive advantages go only to responses Ref favours more than Nora
        c.objective = common.objective("dora_complement", keep=c.objective)
    if "grpo" in v:  # plain GRPO (PPO on the group advantage), with the KL to Nora logged
        c.objective = common.objective("grpo", keep=c.objective)
        c.objective.log_kl_nora = True
    set_advantage = _at_most_one(v, ("pass_at_k", "poly_epo"), "set advantages", arg)  # subsets of 4 of a group of 8
    if set_advantage:
        c.objective = common.objective(c.objective.loss, set_advantage, keep=c.objective)
    if "from_ref" in v:  # Dora starts from Ref, who still holds what Nora forgot
        c.policy_init = "ref"
        c.trainer.stop_kl = 0.0  # Ref is already ~1 nat per token from Nora: a cap to Nora does not apply
    # Complementarity reward, after every variant that rebuilds the objective section: r x (1 - Nora's success on
    # the problem), per strategy x (1 - the share of her samples correct in the response's own strategy), or per
    # mode x (1 - the share of her correct samples in the batch that use the response's strategy).
    reward = _at_most_one(v, ("nora_reward", "nora_strategy_reward", "nora_mode_reward"), "complementarity rewards",
                          arg)
    if reward:
        c.objective.nora_samples = 8
        c.objective.nora_reward_weight = 1.0  # lambda, here so --config / compare.py --set can lower it
    if reward in _NORA_REWARD_BY:  # (nora_reward keeps the default, "problem")
        c.objective.nora_reward_by = _NORA_REWARD_BY[reward]
    if "spare_rare" in v:  # responses in the rare strategies keep their whole reward
        if not reward:
            raise ValueError(f"configs/indicator.py:{arg}: spare_rare changes a complementarity reward; add one of "
                             "nora_reward, nora_strategy_reward, nora_mode_reward.")
        c.objective.spare_rare = True
    guide = _at_most_one(v, ("nora_guide", "ref_guide"), "guides", arg)
    if guide:  # guided groups: up to 2 of each group's 8 rows become Nora's (or Ref's) correct samples
        c.objective.guide, c.objective.guide_from = 2, guide.removesuffix("_guide")
    if guide == "nora_guide" and not reward:  # her samples, without the complementarity reward (rewards unshaped)
        c.objective.nora_samples, c.objective.nora_reward_weight = 8, 0.0
    if "side_by_side" in v:  # the improved variant trains after this one, on the same Ref and Nora
        clash = sorted(v & {"math", "smollm", "handover", "beta_sweep"})
        if clash:  # it needs Countdown's rare strategies, whole responses and one run to follow
            raise ValueError(f"configs/indicator.py:{arg}: side_by_side trains the improved Dora on the embedded "
                             f"task after a single run; it does not combine with {clash[0]}.")
        c.alongside.improved = get_config(IMPROVED + (",smoke" if "smoke" in v else ""))
    if "handover" in common.variants(arg):
        # Paper §5.2: Dora and Nora alternate every 2 tokens within each response; Dora's loss
        # covers her own windows only (Countdown answers are 5-9 tokens).
        c.rollout.handover_window = 2
    return common.finish(c, arg, VARIANTS)
