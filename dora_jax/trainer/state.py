"""Dora's train state and the optimizer built from `config.optim`."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # Dora's parameters (f32 master copy)
    opt_state: Any


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
    lr = optim_cfg.lr
    if optim_cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, max(1, num_steps - optim_cfg.warmup_steps), alpha=0.1)
    elif optim_cfg.schedule == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ValueError(f"config.optim.schedule={optim_cfg.schedule!r}: use 'constant' or 'cosine'.")
    schedule = decay if not optim_cfg.warmup_steps else optax.join_schedules(
        [optax.linear_schedule(0.0, lr, optim_cfg.warmup_steps), decay], [optim_cfg.warmup_steps])
    chain = [optax.clip_by_global_norm(optim_cfg.grad_clip)] if optim_cfg.grad_clip else []
    chain.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay))
    return optax.chain(*chain)


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
