"""Evaluation (docs/design.md §8): pass@k, mixed pass@k and strategy diversity."""

from dora_jax.eval.passk import distinct_correct_strategies, ks_up_to, mixed_pass_at_k, pass_at_k, strategy_entropy

__all__ = ["distinct_correct_strategies", "ks_up_to", "mixed_pass_at_k", "pass_at_k", "strategy_entropy"]
