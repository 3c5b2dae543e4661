"""Dora update throughput: our jitted update vs the same loss and optimizer in PyTorch.

    python benchmarks/train_step.py [--prompts=8] [--group=8] [--json=out.json]

One update of `dora_indicator` (paper Formulation 2) on a rollout batch of `prompts x group`
sequences (prompt 64 + response 128 tokens, left-padded prompts): score ref and Nora
without gradients, Dora with gradients, the loss, backward, global-norm clipping at 1 and
AdamW. Same random Qwen2 weights on both sides (4 layers, width 256, vocabulary 1024).
Ours is `Trainer.update` on one device, which also computes Dora's entropy, the exact
KL(Dora || Nora) and all the metrics of metrics.jsonl; the PyTorch side computes the loss only.
Tokens per second counts B x T tokens per update; median of `--runs` updates after a warm-up,
each side timed in its own process, the two sides alternating for `--rounds` rounds (see `main`).
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

from _shared import config_name, device_name, median_seconds, random_qwen2, single_device_trainer, timed_update
from configs import common
from dora_jax.models import positions_from_mask
from dora_jax.testing import random_batch


def torch_update(ref, nora, dora, opt, batch, hp):
    """dora_indicator with PPO-style ratio clipping, token-mean, as in dora_jax.objectives."""
    tokens = torch.from_numpy(batch.tokens_BxT.astype(np.int64))
    mask = torch.from_numpy(batch.mask_BxT.astype(np.int64))
    pos = torch.from_numpy(np.asarray(positions_from_mask(batch.mask_BxT)).astype(np.int64))
    resp = torch.from_numpy(batch.response_mask_BxT[:, 1:])
    old = torch.from_numpy(batch.logp_old_BxT[:, 1:])
    rewards = torch.from_numpy(batch.rewards_B).view(-1, hp.group_size)
    adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).view(-1, 1)
    targets = tokens[:, 1:, None]

    def logp(model):
        logits = model(input_ids=tokens, attention_mask=mask, position_ids=pos).logits[:, :-1].float()
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


def time_side(side: str, prompts: int, group: int, runs: int) -> tuple[float, int, int]:
    """(median seconds per update, B, T) of one side, "ours" or "pytorch", in this process."""
    config = common.get_config()  # the objective and optimizer settings both sides use
    config.objective.group_size = group
    with tempfile.TemporaryDirectory() as tmp:
        model, lm = random_qwen2(save_to=tmp)
        batch = random_batch(np.random.default_rng(0), vocab_size=lm.config.vocab_size, prompts=prompts,
                             group_size=group, prompt_len=64, response_len=128)
        update = timed_update(single_device_trainer(tmp, group), batch) if side == "ours" else None
    if side == "pytorch":
        dora = copy.deepcopy(model).train()
        dora.config.use_cache = False
        opt = torch.optim.AdamW(dora.parameters(), lr=config.optim.lr, betas=(config.optim.b1, config.optim.b2),
                                weight_decay=config.optim.weight_decay)
        update = functools.partial(torch_update, model, model, dora, opt, batch, config.objective)

    (seconds,) = median_seconds([update], runs)
    return seconds, *batch.tokens_BxT.shape


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5, help="timed updates per process (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two sides")
    parser.add_argument("--json")
    parser.add_argument("--side", choices=["ours", "pytorch"], help=argparse.SUPPRESS)  # one side, in a child
    args = parser.parse_args()
    if args.side:
        print(json.dumps(time_side(args.side, args.prompts, args.group, args.runs)))
        return
    # Each side in its own fresh process: sharing a process, one library's thread pools and
    # allocator state slow the other (the XLA update ran about 10% slower once PyTorch had run in
    # the same process). The sides alternate for `--rounds` rounds, so a slow spell of the machine
    # hits both; the ratio is of the two medians, and the per-round ratios are reported with it.
    seconds = {"ours": [], "pytorch": []}
    for _ in range(args.rounds):
        for side in seconds:
            out = subprocess.run([sys.executable, __file__, f"--side={side}", f"--prompts={args.prompts}",
                                  f"--group={args.group}", f"--runs={args.runs}"], check=True, capture_output=True,
                                 text=True).stdout
            t, B, T = json.loads(out.strip().splitlines()[-1])
            seconds[side].append(t)
    t_ours, t_theirs = float(np.median(seconds["ours"])), float(np.median(seconds["pytorch"]))
    n = B * T
    r = {"device": device_name(), "config": config_name(), "batch": B, "length": T, "ours_tok_s": n / t_ours,
         "pytorch_tok_s": n / t_theirs, "ratio": t_theirs / t_ours,
         "round_ratios": [round(p / o, 3) for o, p in zip(seconds["ours"], seconds["pytorch"])]}
    print(f"device: {r['device']}   config: {r['config']}   batch {r['batch']} x length {r['length']}")
    print(f"dora_indicator update: ours {r['ours_tok_s']:.0f} tok/s, PyTorch {r['pytorch_tok_s']:.0f} tok/s, "
          f"ratio {r['ratio']:.2f} (target >= 1); per round {r['round_ratios']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r], f, indent=2)


if __name__ == "__main__":
    main()
