"""Dora update throughput: our jitted update vs the same loss and optimizer in PyTorch, and the update's
achieved FLOP rate against this machine's own float32 matmul peak.

    python benchmarks/train_step.py [--prompts=8] [--group=8] [--json=out.json]
    python benchmarks/train_step.py --shape=SMOLLM2_DIR --prompts=2 --group=8 --runs=2 --rounds=2   # SmolLM2-135M

One update of `dora_indicator` (paper Formulation 2) on a rollout batch of `prompts x group`
sequences (`--prompt` + `--response` tokens, left-padded prompts): score ref and Nora without
gradients, Dora with gradients, the loss, backward, global-norm clipping at 1 and AdamW. Same
random weights on both sides, of `--shape`: a Qwen2 size of `_shared.SIZES` (default "tiny": 4
layers, width 256, vocabulary 1024) or any model's config.json / dir (e.g. the converted
SmolLM2-135M, a Llama with a 49152-entry vocabulary). Ours is `Trainer.update` on one device, which
also computes Dora's entropy, the exact KL(Dora || Nora) and all the metrics of metrics.jsonl;
both sides form the output head on the response positions only (PyTorch: `logits_to_keep`, as TRL
does). Tokens per second counts B x T tokens per update; median of `--runs` updates after a
warm-up, each side timed in its own process, the two sides alternating for `--rounds` rounds (see
`main`). The achieved rate is `_shared.update_flops` / our median time; the peak is the median of
[2048, 2048] float32 `jnp.dot`s in the same process as our update.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import subprocess
import sys
import tempfile

import numpy as np
import torch

from _shared import (config_name, device_name, matmul_peak_flops, median_seconds, random_model, shape_fields,
                     single_device_trainer, timed_update, update_flops)
from configs import common
from dora_jax.models import ModelConfig, positions_from_mask
from dora_jax.testing import random_batch


def torch_update(ref, nora, dora, opt, batch, hp, response_len):
    """dora_indicator with PPO-style ratio clipping, token-mean, as in dora_jax.objectives."""
    tokens = torch.from_numpy(batch.tokens_BxT.astype(np.int64))
    mask = torch.from_numpy(batch.mask_BxT.astype(np.int64))
    pos = torch.from_numpy(np.asarray(positions_from_mask(batch.mask_BxT)).astype(np.int64))
    N = response_len  # the head is formed on the response positions only, as ours does
    resp = torch.from_numpy(batch.response_mask_BxT[:, -N:])
    old = torch.from_numpy(batch.logp_old_BxT[:, -N:])
    rewards = torch.from_numpy(batch.rewards_B).view(-1, hp.group_size)
    adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).view(-1, 1)
    targets = tokens[:, -N:, None]

    def logp(model):
        logits = model(input_ids=tokens, attention_mask=mask, position_ids=pos, logits_to_keep=N + 1).logits
        logits = logits[:, :-1].float()
        return torch.log_softmax(logits, dim=-1).gather(-1, targets)[..., 0]

    with torch.no_grad():
        l_ref, l_nora = logp(ref), logp(nora)
    l_dora = logp(dora)
    log_ratio = l_ref - l_nora
    w = (log_ratio > 0) * torch.clamp(torch.exp(adv / hp.beta) * log_ratio, -hp.delta, hp.delta)
    rho = torch.exp(torch.clamp(l_dora - old, -20, 20))
    loss = -(w * torch.minimum(rho, torch.clamp(rho, 1 - hp.eps_low, 1 + hp.eps_high)) * resp).sum() / resp.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(dora.parameters(), 1.0)
    opt.step()


def time_side(side: str, args) -> dict:
    """{"seconds": median per update, "B", "T"[, "peak_flops"]} of one side, "ours" or "pytorch", in this process."""
    config = common.get_config()  # the objective and optimizer settings both sides use
    config.objective.group_size = args.group
    fields = shape_fields(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        model, lm = random_model(fields, save_to=tmp)
        batch = random_batch(np.random.default_rng(0), vocab_size=lm.config.vocab_size, prompts=args.prompts,
                             group_size=args.group, prompt_len=args.prompt, response_len=args.response)
        update = (timed_update(single_device_trainer(tmp, args.group, args.response, unroll_layers=bool(args.unroll)),
                               batch) if side == "ours" else None)
    if side == "pytorch":
        dora = copy.deepcopy(model).train()
        dora.config.use_cache = False
        opt = torch.optim.AdamW(dora.parameters(), lr=config.optim.lr, betas=(config.optim.b1, config.optim.b2),
                                weight_decay=config.optim.weight_decay)
        update = functools.partial(torch_update, model, model, dora, opt, batch, config.objective, args.response)

    (seconds,) = median_seconds([update], args.runs)
    B, T = batch.tokens_BxT.shape
    out = {"seconds": seconds, "B": B, "T": T}
    if side == "ours":  # the machine's matmul ceiling, measured in the same process as our update
        out["peak_flops"] = matmul_peak_flops()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--response", type=int, default=128, help="response tokens")
    parser.add_argument("--shape", default="tiny", help="a Qwen2 size of _shared.SIZES, or a config.json / model dir")
    parser.add_argument("--unroll", type=int, default=1, help="ours: trace every layer (1) or scan them (0)")
    parser.add_argument("--runs", type=int, default=5, help="timed updates per process (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two sides")
    parser.add_argument("--json")
    parser.add_argument("--side", choices=["ours", "pytorch"], help=argparse.SUPPRESS)  # one side, in a child
    args = parser.parse_args()
    if args.side:
        print(json.dumps(time_side(args.side, args)))
        return
    # Each side in its own fresh process: sharing a process, one library's thread pools and
    # allocator state slow the other (the XLA update ran about 10% slower once PyTorch had run in
    # the same process). The sides alternate for `--rounds` rounds, so a slow spell of the machine
    # hits both; the ratio is of the two medians, and the per-round ratios are reported with it.
    seconds, peaks = {"ours": [], "pytorch": []}, []
    child = [f"--{k}={v}" for k, v in vars(args).items() if k in ("prompts", "group", "prompt", "response", "shape",
                                                                   "unroll", "runs")]
    for _ in range(args.rounds):
        for side in seconds:
            out = subprocess.run([sys.executable, __file__, f"--side={side}", *child], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            seconds[side].append(r["seconds"])
            peaks += [r["peak_flops"]] if "peak_flops" in r else []
    B, T = r["B"], r["T"]
    t_ours, t_theirs = float(np.median(seconds["ours"])), float(np.median(seconds["pytorch"]))
    fields = shape_fields(args.shape)
    flops = update_flops(ModelConfig.from_hf_dict(fields), B, args.prompt, args.response)
    peak = float(np.median(peaks))
    n = B * T
    r = {"device": device_name(), "config": config_name(**fields), "batch": B, "length": T, "ours_tok_s": n / t_ours,
         "pytorch_tok_s": n / t_theirs, "ratio": t_theirs / t_ours,
         "round_ratios": [round(p / o, 3) for o, p in zip(seconds["ours"], seconds["pytorch"])],
         "update_gflop": flops / 1e9, "ours_gflop_s": flops / t_ours / 1e9, "pytorch_gflop_s": flops / t_theirs / 1e9,
         "matmul_peak_gflop_s": peak / 1e9, "peak_fraction": flops / t_ours / peak}
    print(f"device: {r['device']}   config: {r['config']}   batch {r['batch']} x length {r['length']}")
    print(f"dora_indicator update: ours {r['ours_tok_s']:.0f} tok/s, PyTorch {r['pytorch_tok_s']:.0f} tok/s, "
          f"ratio {r['ratio']:.2f} (target >= 1); per round {r['round_ratios']}")
    print(f"FLOP rate: {r['update_gflop']:.0f} GFLOP per update; ours {r['ours_gflop_s']:.1f} GFLOP/s, PyTorch "
          f"{r['pytorch_gflop_s']:.1f}; float32 matmul peak {r['matmul_peak_gflop_s']:.1f} GFLOP/s; ours at "
          f"{r['peak_fraction']:.0%} of it (target >= 50%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r], f, indent=2)


if __name__ == "__main__":
    main()
