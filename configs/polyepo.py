"""Set RL from Ref on the embedded task: Poly-EPO (default), pass@k-advantage and GRPO+diversity-bonus.

    python launch/train.py --config=configs/polyepo.py[:pass_at_k|:grpo_diversity]

Each trains a policy from pi_ref exactly as Nora is trained (configs/nora_grpo.py: same steps,
learning rate, sampler, scorer and trainer), changing only the advantage:
- `poly_epo` (default): the marginal set advantage of f(S) = mean reward of S x distinct strategies
  in S / n over all C(8, 4) subsets S of a group (docs/design.md §3), strategies from config.diversity.
- `:pass_at_k`: the same machinery with f(S) = max reward in S.
- `:grpo_diversity`: GRPO on r_i + 0.5 r_i / m_i (m_i: the group's correct samples with i's strategy).
Ref and Nora are built or reused from the cache; the report compares the policy with both.
About 2 minutes with cached policies on a 2-core CPU.
"""

from configs import common, nora_grpo, ref_sft


VARIANTS = ("pass_at_k", "grpo_diversity")  # (the shared ones, configs/common.py, too)


def get_config(arg=None):
    common.check_variants(arg, VARIANTS)
    variant = common.variants(arg) & set(VARIANTS)
    c = nora_grpo.get_config(",".join(common.variants(arg) - variant))  # Nora's recipe; only the advantage differs
    c.name = variant.pop() if variant else "polyepo"
    c.build.ref = ref_sft.get_config(common.build_arg(arg))
    c.build.nora = nora_grpo.get_config(common.build_arg(arg))

    # Objective: the PPO-clipped policy gradient of GRPO with a set-level advantage; group_size,
    # set_size (4 of 8: 70 subsets per group) and diversity_bonus keep common's defaults.
    c.objective = common.objective("grpo", "poly_epo" if c.name == "polyepo" else c.name, keep=c.objective)
    c.objective.log_kl_nora = True  # report KL to Nora although the loss does not read her

    # Diversity: Countdown's own strategy labels (the operator template); see dora_jax.tasks.diversity.
    c.diversity.name = "task_labels"
    return c
