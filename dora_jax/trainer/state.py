"""The trained policy's state and the optimizer built from `config.optim`."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dora_jax.sections import parse, require


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # the trained policy's parameters (f32 master copy)
    opt_state: Any


SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The `optim` config section: AdamW with a warm-up and a schedule, global-norm clipping, accumulation."""

    lr: float = 2e-5  # peak learning rate
    warmup_steps: int = 0  # linear warmup steps
    schedule: str = "constant"  # constant | cosine (decays to 10% over trainer.num_steps)
    b1: float = 0.9  # Adam beta1
    b2: float = 0.99  # Adam beta2
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # global-norm clip (0 = off)
    grad_accum: int = 1  # micro-batches per update (exact: loss denominators are global)

    def __post_init__(self):
        require(self.lr > 0, "lr", self.lr, "use a positive learning rate, e.g. 1e-5.")
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "use 0 (none) or more updates.")
        require(self.schedule in SCHEDULES, "schedule", self.schedule, f"use one of {', '.join(SCHEDULES)}.")
        require(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "b1", (self.b1, self.b2), "Adam betas lie in [0, 1).")
        require(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay", (self.weight_decay, self.grad_clip),
                "weight_decay and grad_clip cannot be negative (0 = off).")
        require(self.grad_accum >= 1, "grad_accum", self.grad_accum, "use 1 (no accumulation) or more micro-batches.")


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
    """The optimizer of the `optim` section (an OptimConfig or its ConfigDict) for a run of `num_steps` updates."""
    optim_cfg = parse(OptimConfig, optim_cfg, "optim")
    lr = optim_cfg.lr
    if optim_cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, max(1, num_steps - optim_cfg.warmup_steps), alpha=0.1)
    else:
        decay = optax.constant_schedule(lr)
    schedule = decay if not optim_cfg.warmup_steps else optax.join_schedules(
        [optax.linear_schedule(0.0, lr, optim_cfg.warmup_steps), decay], [optim_cfg.warmup_steps])
    chain = [optax.clip_by_global_norm(optim_cfg.grad_clip)] if optim_cfg.grad_clip else []
    chain.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay))
    return optax.chain(*chain)


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
