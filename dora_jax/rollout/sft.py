"""SFT batches in the trainer's batch format, and the distillation corpus they train on.

    source = SFTBatches(task.sft_examples(seed), batch_size, seed, P, N)        # SFT of Ref
    corpus = distill_corpus(evaluator, problems, dora_params, nora_params, config.distill, seed)

Distillation (paper §5.1) fine-tunes Nora on a STaR-filtered corpus of Dora's samples: Dora samples each training problem; only correct responses are kept (the STaR filter). With
`rare_only`, a kept response must also use a strategy Nora rarely uses on that problem (less than
`rare_share` of Nora's own samples), so the corpus carries what Nora forgot rather than what she
knows. With `nora_replay`, Nora's own correct samples join the corpus (rehearsal), so fine-tuning
on the rare strategies does not wash out the ones she already solves with.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dora_jax.batch import RolloutBatch
from dora_jax.sections import parse, require
from dora_jax.tasks import streams


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The `sft` config section of configs that train by SFT (configs/ref_sft.py, configs/distill.py)."""

    batch_size: int = 256  # sequences per update

    def __post_init__(self):
        require(self.batch_size >= 1, "batch_size", self.batch_size, "use at least one sequence per update.")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The `distill` config section (configs/distill.py): Nora fine-tuned on the teacher's correct samples."""

    samples_per_problem: int = 8  # the teacher's samples per training problem
    rare_only: bool = True  # keep only strategies Nora rarely uses on that problem
    rare_share: float = 0.25  # "rarely": in fewer than this share of Nora's own samples on the problem
    nora_replay: bool = False  # also keep Nora's own correct samples (rehearsal of what she solves)

    def __post_init__(self):
        require(self.samples_per_problem >= 1, "samples_per_problem", self.samples_per_problem,
                "sample the teacher at least once per problem.")
        require(0 <= self.rare_share <= 1, "rare_share", self.rare_share, "use a share in [0, 1].")


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

    def next_batch(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        del step
        B, P, T = self.batch_size, self.P, self.P + self.N
        tokens = np.zeros((B, T), np.int32)
        mask = np.zeros((B, T), np.int32)
        response = np.zeros((B, T), np.float32)
        for row in range(B):
            prompt, answer, _ = self.corpus[streams.epoch_item(self.position + row, len(self.corpus), self.seed)]
            answer = answer[: self.N]
            tokens[row, P - len(prompt):P], tokens[row, P:P + len(answer)] = prompt, answer
            mask[row, P - len(prompt):P + len(answer)] = 1
            response[row, P:P + len(answer)] = 1
        self.position += B
        batch = RolloutBatch(tokens_BxT=tokens, mask_BxT=mask, response_mask_BxT=response,
                             logp_old_BxT=np.zeros((B, T), np.float32), rewards_B=np.zeros(B, np.float32),
                             clusters_B=np.full(B, -1, np.int32))
        return batch, {}

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])

def distill_corpus(evaluator, problems: list, dora_params, nora_params, cfg, seed: int
                   ) -> list[tuple[list[int], list[int], int]]:
    """(prompt_ids, response_ids, strategy) examples from Dora's correct samples on `problems`
    (`cfg`: the `distill` section)."""
    cfg = parse(DistillConfig, cfg, "distill")
    n = cfg.samples_per_problem
    dora = evaluator.sample(dora_params, problems, n, seed=seed, desc=f"distill: sample Dora ({len(problems)} x {n})")
    keep_PxN = dora["correct"].copy()
    if cfg.rare_only or cfg.nora_replay:
        nora = evaluator.sample(nora_params, problems, n, seed=seed + 1, desc="distill: sample Nora")
    if cfg.rare_only:
        # share_PxN: how often Nora used each of Dora's strategies on the same problem.
        share_PxN = np.mean(dora["strategy"][:, :, None] == nora["strategy"][:, None, :], axis=-1)
        keep_PxN &= (share_PxN < cfg.rare_share) & (dora["strategy"] >= 0)
    prompt_QxP, mask_QxP = evaluator.task.prompts(problems)
    corpus = _examples(dora, keep_PxN, prompt_QxP, mask_QxP)
    summary = f"Distillation corpus: {len(corpus)} of Dora's {dora['correct'].size} samples"
    if cfg.nora_replay:
        corpus += _examples(nora, nora["correct"], prompt_QxP, mask_QxP)
        summary += f", plus Nora's {int(nora['correct'].sum())} correct samples (config.distill.nora_replay)"
    print(summary + ".")
    if not corpus:
        raise ValueError(f"distillation kept none of Dora's {dora['correct'].size} samples (correct: "
                         f"{int(dora['correct'].sum())}). Raise config.distill.samples_per_problem"
                         + (" or config.distill.rare_share, or set config.distill.rare_only=False." if cfg.rare_only else "."))
    return corpus


def _examples(samples: dict, keep_PxN: np.ndarray, prompt_QxP, mask_QxP) -> list[tuple[list[int], list[int], int]]:
    """The kept samples as (prompt_ids, response_ids, strategy), padding dropped."""
    return [([int(t) for t in prompt_QxP[p][mask_QxP[p] > 0]],
             [int(t) for t in samples["tokens"][p, i][samples["mask"][p, i] > 0]],
             int(samples["strategy"][p, i]))
            for p, i in zip(*np.nonzero(keep_PxN))]
