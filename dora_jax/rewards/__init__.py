"""Verifiable rewards (SPEC §7): Countdown scoring with strategy labels."""

from dora_jax.rewards.countdown import MAX_EXPRESSION_TOKENS, Verdict, score_batch, score_response

__all__ = ["MAX_EXPRESSION_TOKENS", "Verdict", "score_batch", "score_response"]
