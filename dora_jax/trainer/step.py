"""The pure, jitted update: score, objective, gradient accumulation, optimizer step.

A rollout batch is a dict of arrays (B = prompts x group_size sequences, prompt-major):

    tokens_BxT         int32   prompt + response tokens (prompts left-padded)
    mask_BxT           int32   1 on real tokens (attention mask)
    response_mask_BxT  float32 1 on tokens Dora is trained on (response; Dora's windows under handover)
    logp_old_BxT       float32 behaviour-policy log-probs recorded by the sampler (0 off the response)
    rewards_B          float32 scalar reward per sequence
    clusters_B         int32   strategy id per sequence (-1 = none), for set advantages
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import jaxlib.version
import optax

from dora_jax import objectives, scoring
from dora_jax.models import ModelConfig
from dora_jax.trainer.state import TrainState

BATCH_KEYS = ("tokens_BxT", "mask_BxT", "response_mask_BxT", "logp_old_BxT", "rewards_B", "clusters_B")
# Objective metric -> the stable metrics.jsonl name of docs/design.md §9.
_STABLE_NAMES = {"psi_mean": "psi/mean", "indicator_frac": "indicator/frac"}


def scored_trees(objective_cfg) -> tuple[str, ...]:
    """The trees the update scores: Dora, plus the frozen ones the loss reads (SFT and GRPO with
    beta_kl = 0 read neither). `log_kl_nora` adds Nora so that methods trained from ref (GRPO,
    Poly-EPO) still report their distance to her."""
    read = objectives.trees_read(objective_cfg)
    nora = "nora" in read or objective_cfg.log_kl_nora
    return ("dora",) + (("nora",) if nora else ()) + (("ref",) if "ref" in read else ())


def make_update(model_config: ModelConfig, objective_cfg, tx: optax.GradientTransformation, *, temperature: float,
                grad_accum: int, response_budget: int) -> Callable[[TrainState, dict, dict], tuple[TrainState, dict]]:
    """Builds `update(state, frozen, batch) -> (state, metrics)`; `frozen` = {"ref": p, "nora": p}.

    `response_budget`: the most response tokens per sequence (rollout.max_new_tokens), Dr.GRPO's normaliser.
    """
    loss_fn = objectives.get_loss(objective_cfg.loss)
    advantage_fn = objectives.get_advantage(objective_cfg.advantage)
    G = objective_cfg.group_size

    read = objectives.trees_read(objective_cfg)
    uses_nora = "nora" in scored_trees(objective_cfg)
    entropy_coef = objective_cfg.entropy_coef

    def micro_loss(params, frozen, mb, denoms):
        trees = {"dora": params, **({"nora": frozen["nora"]} if uses_nora else {})}
        scores = scoring.token_logprobs(model_config, trees, mb["tokens_BxT"], mb["mask_BxT"], temperature=temperature)
        resp = mb["response_mask_BxT"]
        loss_batch = {"mask_BxT": resp, "logp_old_BxT": mb["logp_old_BxT"], "adv_B": mb["adv_B"]}
        if "ref" in read:
            loss_batch["logp_ref_BxT"] = scoring.token_logprobs(
                model_config, {"ref": frozen["ref"]}, mb["tokens_BxT"], mb["mask_BxT"], temperature=temperature,
                kl=None, entropy_of=())["ref"]
        if "nora" in read:
            loss_batch["logp_nora_BxT"] = scores["nora"]
        loss_batch = jax.lax.stop_gradient(loss_batch)
        # Differentiable only when the entropy bonus is on: its full-vocabulary backward is not free.
        entropy = scores["entropy/dora"]
        loss_batch["entropy_BxT"] = entropy if entropy_coef else jax.lax.stop_gradient(entropy)
        loss, metrics = loss_fn(scores["dora"], objectives.LossBatch(loss_batch), objective_cfg, denoms)
        metrics = {f"objective/{k}": v for k, v in metrics.items()}
        if uses_nora:
            kl = jax.lax.stop_gradient(scores["kl/dora_nora"]) * resp
            metrics["kl/dora_nora_token"] = jnp.sum(kl) / denoms.tokens
            metrics["kl/dora_nora_seq"] = jnp.sum(kl) / denoms.seqs
        metrics["entropy"] = jnp.sum(jax.lax.stop_gradient(scores["entropy/dora"]) * resp) / denoms.tokens
        return loss, metrics

    def update(state: TrainState, frozen: dict, batch: dict) -> tuple[TrainState, dict]:
        B = batch["rewards_B"].shape[0]
        rewards_PxG = batch["rewards_B"].reshape(B // G, G)
        clusters_PxG = batch["clusters_B"].reshape(B // G, G)
        adv_B = advantage_fn(rewards_PxG, clusters_PxG, objective_cfg).reshape(B)
        denoms = objectives.denoms_of(batch["response_mask_BxT"], response_budget)
        inputs = {k: batch[k] for k in ("tokens_BxT", "mask_BxT", "response_mask_BxT", "logp_old_BxT")}
        inputs["adv_B"] = adv_B
        # [M, B/M, ...]: micro-batches scanned in order; sums of their grads are exact
        # because every loss term is divided by the full batch's denominators.
        micro = jax.tree.map(lambda x: x.reshape(grad_accum, B // grad_accum, *x.shape[1:]), inputs)
        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

        def accumulate(carry, mb):
            (loss, metrics), grads = grad_fn(state.params, frozen, mb, denoms)
            return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

        zero_metrics = jax.eval_shape(lambda: grad_fn(state.params, frozen, jax.tree.map(lambda x: x[0], micro),
                                                      denoms)[0][1])
        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_metrics),
                 jax.tree.map(jnp.zeros_like, state.params))
        (loss, metrics, grads), _ = jax.lax.scan(accumulate, zeros, micro)

        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics.update({stable: metrics[f"objective/{name}"] for name, stable in _STABLE_NAMES.items()
                        if f"objective/{name}" in metrics})
        metrics.update({
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "update_norm": optax.tree.norm(updates),
            "reward/mean": jnp.mean(batch["rewards_B"]),
            "advantage/abs_mean": jnp.mean(jnp.abs(adv_B)),
            "response_length/mean": jnp.sum(batch["response_mask_BxT"]) / B,
        })
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return update


# XLA CPU options for the update step: the YNNPACK/XNNPACK dot fusions make the decoder's
# forward and backward slower than XLA's own dot emitter on the CPUs measured (attention
# forward 125 -> 71 ms in benchmarks/train_step.py's model), but they speed up decoding, so
# they are turned off for this one compilation only. jaxlib < 0.10.2 does not know them.
CPU_UPDATE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "",
                      "xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_DISABLED"}
CPU_UPDATE_OPTIONS_KNOWN = jaxlib.version.__version_info__[:3] >= (0, 10, 2)


def jit_update(update, state_shardings, frozen_shardings, batch_shardings, metrics_sharding=None):
    """Jitted update with explicit in/out shardings; the old state's buffers are donated.

    A replicated `metrics_sharding` lets every process of a multi-process run read the metrics.
    """
    platform = next(iter(jax.tree.leaves(state_shardings)[0].device_set)).platform
    cpu = platform == "cpu" and CPU_UPDATE_OPTIONS_KNOWN
    return jax.jit(update, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                   out_shardings=(state_shardings, metrics_sharding), donate_argnums=(0,),
                   compiler_options=CPU_UPDATE_OPTIONS if cpu else None)

