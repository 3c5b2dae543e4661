"""The pure, jitted update: score, objective, gradient accumulation, optimizer step.

    update = make_update(model_config, config.objective, tx, temperature=..., grad_accum=..., response_budget=...)
    state, metrics = update(state, {"ref": p_ref, "nora": p_nora}, batch)    # batch: a RolloutBatch

The trained tree is the policy (Dora, or Nora / Ref when they are the ones trained); the frozen
trees are named by role. The batch contract is `dora_jax.batch.RolloutBatch`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import jaxlib.version
import optax
from jax.sharding import PartitionSpec as P

from dora_jax import objectives, scoring, sharding
from dora_jax.batch import RolloutBatch
from dora_jax.models import ModelConfig, logical_specs
from dora_jax.trainer.state import TrainState

# Objective metric -> the stable metrics.jsonl name of docs/design.md §9.
_STABLE_NAMES = {"psi_mean": "psi/mean", "indicator_frac": "indicator/frac"}
KL_METRIC = "kl/policy_nora_token"  # exact KL(policy || Nora) per response token, before the update


def scored_trees(objective_cfg) -> tuple[str, ...]:
    """The trees the update scores: the policy, plus the frozen ones the loss reads (SFT and GRPO with
    beta_kl = 0 read neither). `log_kl_nora` adds Nora so that methods trained from ref (GRPO,
    Poly-EPO) still report their distance to her."""
    objective_cfg = objectives.parse_config(objective_cfg)
    read = objectives.trees_read(objective_cfg)
    nora = "nora" in read or objective_cfg.log_kl_nora
    return ("policy",) + (("nora",) if nora else ()) + (("ref",) if "ref" in read else ())


def make_update(model_config: ModelConfig, objective_cfg, tx: optax.GradientTransformation, *, temperature: float,
                grad_accum: int, response_budget: int,
                stop_kl: float = 0.0) -> Callable[[TrainState, dict, RolloutBatch], tuple[TrainState, dict]]:
    """Builds `update(state, frozen, batch) -> (state, metrics)`; `frozen` = {"ref": p, "nora": p}.

    `response_budget`: the most response tokens per sequence (rollout.max_new_tokens), Dr.GRPO's normaliser.
    The responses fill the last `response_budget` columns of a batch; only those are scored.
    `stop_kl` > 0: an update whose policy (before it) is already more than `stop_kl` nats per token from Nora is
    not applied (metric "update/applied" 0), so a run the KL cap stops keeps the policy whose KL was measured.
    """
    hp = objectives.parse_config(objective_cfg)
    advantage_fn = objectives.get_advantage(hp.advantage)
    micro_loss = _micro_loss(model_config, hp, temperature, response_budget)
    names = logical_specs(model_config)

    def grad_fn(params, frozen, mb, denoms):
        (loss, metrics), grads = jax.value_and_grad(micro_loss, has_aux=True)(params, frozen, mb, denoms)
        return (loss, metrics), _spread(grads, names)

    def update(state: TrainState, frozen: dict, batch: RolloutBatch) -> tuple[TrainState, dict]:
        B, G = batch.rows, hp.group_size
        adv_B = advantage_fn(batch.rewards_B.reshape(B // G, G), batch.clusters_B.reshape(B // G, G), hp).reshape(B)
        denoms = objectives.denoms_of(batch.response_mask_BxT, response_budget)
        inputs = {"tokens_BxT": batch.tokens_BxT, "mask_BxT": batch.mask_BxT,
                  "response_mask_BxT": batch.response_mask_BxT, "logp_old_BxT": batch.logp_old_BxT}
        loss, metrics, grads = _accumulate(grad_fn, state.params, frozen, {**inputs, "adv_B": adv_B}, denoms,
                                           grad_accum, names)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if stop_kl and KL_METRIC in metrics:
            apply = metrics[KL_METRIC] <= stop_kl
            updates = jax.tree.map(lambda u: u * apply, updates)  # a refused update moves nothing (update_norm 0)
            opt_state = jax.tree.map(lambda new, old: jnp.where(apply, new, old), opt_state, state.opt_state)
            metrics["update/applied"] = apply.astype(jnp.float32)
        params = optax.apply_updates(state.params, updates)
        metrics.update({stable: metrics[f"objective/{name}"] for name, stable in _STABLE_NAMES.items()
                        if f"objective/{name}" in metrics})
        metrics.update({
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "update_norm": optax.tree.norm(updates),
            "reward/mean": jnp.mean(batch.rewards_B),
            "advantage/abs_mean": jnp.mean(jnp.abs(adv_B)),
            "response_length/mean": jnp.sum(batch.response_mask_BxT) / B,
        })
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return update


def _micro_loss(model_config: ModelConfig, hp, temperature: float, response_budget: int) -> Callable:
    """`micro_loss(params, frozen, micro_batch, denoms) -> (loss, metrics)`: score the trees the loss reads,
    then the registered loss on one micro-batch (divided by the whole batch's denominators). Only the
    last `response_budget` columns (the responses) are scored."""
    loss_fn = objectives.get_loss(hp.loss)
    read = objectives.trees_read(hp)
    uses_nora = "nora" in scored_trees(hp)

    def micro_loss(params, frozen, mb, denoms):
        trees = {"policy": params, **({"nora": frozen["nora"]} if uses_nora else {})}
        T = mb["tokens_BxT"].shape[1]
        score = functools.partial(scoring.token_logprobs, model_config, tokens_BxT=mb["tokens_BxT"],
                                  mask_BxT=mb["mask_BxT"], temperature=temperature, score_from=T - response_budget)
        scores = score(trees, kl=("policy", "nora"), entropy_of=("policy",))
        resp = mb["response_mask_BxT"]
        loss_batch = {"mask_BxT": resp, "logp_old_BxT": mb["logp_old_BxT"], "adv_B": mb["adv_B"]}
        if "ref" in read:
            loss_batch["logp_ref_BxT"] = score({"ref": frozen["ref"]}, kl=None, entropy_of=())["ref"]
        if "nora" in read:
            loss_batch["logp_nora_BxT"] = scores["nora"]
        loss_batch = jax.lax.stop_gradient(loss_batch)
        # Differentiable only when the entropy bonus is on: its full-vocabulary backward is not free.
        entropy = scores["entropy/policy"]
        loss_batch["entropy_BxT"] = entropy if hp.entropy_coef else jax.lax.stop_gradient(entropy)
        loss, metrics = loss_fn(scores["policy"], objectives.LossBatch(loss_batch), hp, denoms)
        metrics = {f"objective/{k}": v for k, v in metrics.items()}
        if uses_nora:
            kl = jax.lax.stop_gradient(scores["kl/policy_nora"]) * resp
            metrics[KL_METRIC] = jnp.sum(kl) / denoms.tokens
            metrics["kl/policy_nora_seq"] = jnp.sum(kl) / denoms.seqs
        metrics["entropy"] = jnp.sum(jax.lax.stop_gradient(entropy) * resp) / denoms.tokens
        return loss, metrics

    return micro_loss


def _spread(grads, names):
    return jax.tree.map(lambda g, n: sharding.spread(g, tuple(n)), grads, names, is_leaf=lambda x: isinstance(x, P))


def _accumulate(grad_fn, params, frozen, inputs: dict, denoms, grad_accum: int, names):
    """(loss, metrics, grads) summed over `grad_accum` micro-batches scanned in order; the sums are the
    full batch's values because every term is divided by the full batch's denominators."""
    B = inputs["adv_B"].shape[0]
    # Micro-batch m holds rows m, m + M, m + 2M, ...: the rows of every batch-axis device, so each
    # micro-batch is split over all of them (a [M, B/M] split of contiguous rows would put each
    # micro-batch on a fraction of the devices).
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(B // grad_accum, grad_accum, *x.shape[1:]), 0, 1), inputs)

    def step(carry, mb):
        mb = jax.tree.map(lambda x: sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1)), mb)
        (loss, metrics), grads = grad_fn(params, frozen, mb, denoms)
        return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zero_metrics = jax.eval_shape(lambda: grad_fn(params, frozen, first, denoms)[0][1])
    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_metrics),
             _spread(jax.tree.map(jnp.zeros_like, params), names))
    return jax.lax.scan(step, zeros, micro)[0]


# XLA CPU options for the update step: the YNNPACK/XNNPACK dot fusions make the decoder's
# forward and backward slower than XLA's own dot emitter on the CPUs measured (attention
# forward 125 -> 71 ms in benchmarks/train_step.py's model), but they speed up decoding, so
# they are turned off for this one compilation only. jaxlib < 0.10.2 does not know them.
CPU_UPDATE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "",
                      "xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_DISABLED"}
CPU_UPDATE_OPTIONS_KNOWN = jaxlib.version.__version_info__[:3] >= (0, 10, 2)


def jit_update(update, state_shardings, frozen_shardings, batch_shardings, metrics_sharding=None,
               layout: sharding.Layout | None = None):
    """Jitted update with explicit in/out shardings; the old state's buffers are donated.

    A replicated `metrics_sharding` lets every process of a multi-process run read the metrics.
    `layout` (the mesh and rules of the shardings) lays out the activations: rows split over the
    batch axes, weights gathered per layer in the compute dtype.
    """
    platform = next(iter(jax.tree.leaves(state_shardings)[0].device_set)).platform
    cpu = platform == "cpu" and CPU_UPDATE_OPTIONS_KNOWN
    return jax.jit(sharding.traced_under(update, layout), in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                   out_shardings=(state_shardings, metrics_sharding), donate_argnums=(0,),
                   compiler_options=CPU_UPDATE_OPTIONS if cpu else None)

