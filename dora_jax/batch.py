"""The rollout batch: what every batch source hands the learner (docs/design.md §4).

    batch = RolloutBatch(tokens_BxT, mask_BxT, response_mask_BxT, logp_old_BxT, rewards_B, clusters_B)

B = prompts x group_size sequences, prompt-major (the G responses of a prompt are adjacent).
A NamedTuple, so it is a JAX pytree: the jitted update takes it whole and the trainer lays each
field out by its rank. A source returns it with the host-side metrics of its making:
`next_batch(step) -> (RolloutBatch, {"rollout/valid_frac": ..., ...})`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class RolloutBatch(NamedTuple):
    tokens_BxT: Any  # int32: prompt + response tokens (prompts left-padded; responses right-padded in the last rollout.max_new_tokens columns)
    mask_BxT: Any  # int32: 1 on real tokens (the attention mask)
    response_mask_BxT: Any  # float32: 1 on the tokens the policy is trained on (its response; its windows under handover)
    logp_old_BxT: Any  # float32: the behaviour policy's log-probs recorded by the sampler (0 off the response)
    rewards_B: Any  # float32: one scalar reward per sequence
    clusters_B: Any  # int32: strategy id per sequence (-1 = none), for set advantages

    @property
    def rows(self) -> int:
        return int(np.shape(self.rewards_B)[0])
