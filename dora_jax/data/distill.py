"""Distilling Dora's discoveries back into Nora (paper §5.1): a STaR-filtered SFT corpus of Dora's samples.

    corpus = distill_corpus(evaluator, problems, dora_params, nora_params, config.distill, seed)
    SFTBatches(corpus, ...)          # then fine-tune Nora on it with the `sft` loss

Dora samples each training problem; only correct responses are kept (the STaR filter). With
`rare_only`, a kept response must also use a strategy Nora rarely uses on that problem (less than
`rare_share` of Nora's own samples), so the corpus carries what Nora forgot rather than what she
knows. With `nora_replay`, Nora's own correct samples join the corpus (rehearsal), so fine-tuning
on the rare strategies does not wash out the ones she already solves with.
"""

from __future__ import annotations

import numpy as np


def distill_corpus(evaluator, problems: list, dora_params, nora_params, cfg, seed: int
                   ) -> list[tuple[list[int], list[int], int]]:
    """(prompt_ids, response_ids, strategy) examples from Dora's correct samples on `problems`."""
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
