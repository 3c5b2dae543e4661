"""Random rollout batches of the trainer's batch format, for tests and benchmarks.

They exercise the update step exactly as sampled rollouts do (left-padded prompts,
variable response lengths, behaviour log-probs, rewards, strategy ids) without a sampler.
"""

from __future__ import annotations

import numpy as np

from dora_jax.batch import RolloutBatch


def random_batch(rng: np.random.Generator, *, vocab_size: int, prompts: int, group_size: int, prompt_len: int,
                 response_len: int) -> RolloutBatch:
    B, T = prompts * group_size, prompt_len + response_len
    tokens = rng.integers(1, vocab_size, (B, T)).astype(np.int32)
    pad = np.repeat(rng.integers(0, prompt_len // 2 + 1, prompts), group_size)  # same prompt, same padding
    length = rng.integers(1, response_len + 1, B)
    pos = np.arange(T)[None, :]
    mask = (pos >= pad[:, None]) & (pos < prompt_len + length[:, None])
    response = (pos >= prompt_len) & mask
    return RolloutBatch(
        tokens_BxT=np.where(mask, tokens, 0).astype(np.int32),
        mask_BxT=mask.astype(np.int32),
        response_mask_BxT=response.astype(np.float32),
        logp_old_BxT=np.where(response, -rng.exponential(2.0, (B, T)), 0).astype(np.float32),
        rewards_B=rng.integers(0, 2, B).astype(np.float32),
        clusters_B=rng.integers(-1, 4, B).astype(np.int32),
    )


class RandomRollouts:
    """A resumable stream of `random_batch`es: batch n depends only on (seed, n)."""

    def __init__(self, seed: int = 0, **shape):
        self.seed, self.shape, self.position = seed, shape, 0

    def next_batch(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        del step  # the stream's own position decides, so a wrongly restored state shows up
        batch = random_batch(np.random.default_rng([self.seed, self.position]), **self.shape)
        self.position += 1
        return batch, {}

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
