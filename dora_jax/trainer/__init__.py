"""Sharded trainer for Dora (and GRPO/Poly-EPO policies): state, update step, loop."""

from dora_jax.trainer.loop import BatchSource, NonFiniteError, Trainer
from dora_jax.trainer.state import TrainState, init_state, make_optimizer
from dora_jax.trainer.step import jit_update, make_update

__all__ = ["BatchSource", "NonFiniteError", "TrainState", "Trainer", "init_state", "jit_update",
           "make_optimizer", "make_update"]
