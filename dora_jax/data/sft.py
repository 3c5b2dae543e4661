"""SFT batches in the trainer's batch format: a corpus of (prompt, response) token lists."""

from __future__ import annotations

import numpy as np


class SFTBatches:
    """Seeded shuffled epochs over a corpus; resumable by position.

    Each example becomes one row [prompt (left-padded to P) | response (right-padded to N)],
    with the loss mask on the response, so SFT sees the same layout as a rollout batch.
    """

    def __init__(self, corpus, batch_size: int, seed: int, prompt_len: int, response_len: int):
        if not corpus:
            raise ValueError("the SFT corpus is empty: check config.task (no problem in the SFT split has a solution).")
        self.corpus, self.batch_size, self.seed = corpus, batch_size, seed
        self.P, self.N = prompt_len, response_len
        self.position = 0

    def next_batch(self, step: int) -> dict[str, np.ndarray]:
        del step
        B, P, T = self.batch_size, self.P, self.P + self.N
        tokens = np.zeros((B, T), np.int32)
        mask = np.zeros((B, T), np.int32)
        response = np.zeros((B, T), np.float32)
        for row in range(B):
            epoch, index = divmod(self.position + row, len(self.corpus))
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.corpus))
            prompt, answer, _ = self.corpus[order[index]]
            answer = answer[: self.N]
            tokens[row, P - len(prompt):P], tokens[row, P:P + len(answer)] = prompt, answer
            mask[row, P - len(prompt):P + len(answer)] = 1
            response[row, P:P + len(answer)] = 1
        self.position += B
        return {"tokens_BxT": tokens, "mask_BxT": mask, "response_mask_BxT": response,
                "logp_old_BxT": np.zeros((B, T), np.float32), "rewards_B": np.zeros(B, np.float32),
                "clusters_B": np.full(B, -1, np.int32)}

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
