"""Three-tree scoring throughput: fused vs three single-tree calls vs three PyTorch forwards.

    python benchmarks/scoring.py [--batch=32] [--len=192] [--json=out.json]

Same random Qwen2 weights for all three trees (4 layers, width 256, vocabulary 1024).
Rows, each the median of `--runs` timed calls after a warm-up, sides alternating:
- fused log-probs: one `scoring.score` call over ref, Nora and Dora (log-probs only) vs
  three separate single-tree `scoring.score` calls. Fusion must not cost more than the sum.
- full scoring: the fused call with Dora's entropy and the exact KL(Dora || Nora), as the
  trainer uses it, vs three PyTorch forward passes (log-softmax, gather, and the same
  entropy and KL from the logits) under `torch.inference_mode`.
Tokens per second counts B x T tokens scored per tree set.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import torch

from _shared import config_name, device_name, median_seconds, random_qwen2
from dora_jax import scoring
from dora_jax.models import positions_from_mask


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--len", type=int, default=192, help="sequence length (prompt + response)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    model, lm = random_qwen2()
    B, T = args.batch, args.len
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, lm.config.vocab_size, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[: B // 2, : T // 8] = 0  # half the rows left-padded
    trees = {"ref": lm.params, "nora": jax.tree.map(lambda x: x * 1.0, lm.params),
             "policy": jax.tree.map(lambda x: x * 1.0, lm.params)}
    tok_j, mask_j = jax.device_put(tokens), jax.device_put(mask)

    def fused_logp():
        jax.block_until_ready(scoring.score(lm.config, trees, tok_j, mask_j, kl=None, entropy_of=()))

    def three_single():
        for name, p in trees.items():
            jax.block_until_ready(scoring.score(lm.config, {name: p}, tok_j, mask_j, kl=None, entropy_of=()))

    def fused_full():
        jax.block_until_ready(scoring.score(lm.config, trees, tok_j, mask_j))

    tok_t = torch.from_numpy(tokens.astype(np.int64))
    mask_t = torch.from_numpy(mask.astype(np.int64))
    pos_t = torch.from_numpy(np.asarray(positions_from_mask(mask)).astype(np.int64))

    def torch_three():
        with torch.inference_mode():
            logps = {}
            for name in trees:  # one model stands for all three trees: same weights, same cost
                logits = model(input_ids=tok_t, attention_mask=mask_t, position_ids=pos_t).logits[:, :-1].float()
                logps[name] = torch.log_softmax(logits, dim=-1)
                logps[name].gather(-1, tok_t[:, 1:, None])
            entropy = -(logps["dora"].exp() * logps["dora"]).sum(-1)
            kl = (logps["dora"].exp() * (logps["dora"] - logps["nora"])).sum(-1)
            del entropy, kl

    t_fused, t_single, t_full, t_torch = median_seconds([fused_logp, three_single, fused_full, torch_three], args.runs)
    n = B * T
    results = [
        {"row": "fused log-probs vs three single-tree calls (ours)", "ours_tok_s": n / t_fused,
         "baseline_tok_s": n / t_single, "ratio": t_single / t_fused, "time_ratio_fused_over_sum": t_fused / t_single},
        {"row": "three-tree scoring with entropy and KL vs three PyTorch forwards", "ours_tok_s": n / t_full,
         "baseline_tok_s": n / t_torch, "ratio": t_torch / t_full},
    ]
    device, config = device_name(), config_name()
    print(f"device: {device}   config: {config}   batch {B} x length {T}")
    print(f"{'comparison':<66} {'ours tok/s':>11} {'baseline tok/s':>15} {'speedup':>8}")
    for r in results:
        r.update(device=device, config=config, batch=B, length=T)
        print(f"{r['row']:<66} {r['ours_tok_s']:>11.0f} {r['baseline_tok_s']:>15.0f} {r['ratio']:>8.2f}")
    print(f"fused time / sum of three single-tree times = {t_fused / t_single:.2f} (target <= 1.1)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
