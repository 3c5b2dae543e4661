"""Sampling rollouts: KV-cache decoding, policy mixtures and policy handover."""

from dora_jax.rollout.sampler import FINISH_LENGTH, FINISH_STOP, Rollout, filter_logits, sample

__all__ = ["FINISH_LENGTH", "FINISH_STOP", "Rollout", "filter_logits", "sample"]
