"""Decode throughput of `dora_jax.rollout.sample` vs Hugging Face `generate`, same weights.

    python benchmarks/sampler.py                         # batch 4 and 32, under a minute on 2 CPU cores
    python benchmarks/sampler.py --batch=4 --json=out.json

Builds a random `transformers.Qwen2ForCausalLM` (4 layers, width 256, vocabulary 1024),
saves it and loads the same weights with `dora_jax.models.hf.load`. Both sides sample
`--new` tokens after a `--prompt`-token prompt at temperature 1 with no top-k / top-p and
no stop ids (every row runs the full length). Reported: new tokens per second over the
whole call (prefill included), median of `--runs` timed calls per side after one warm-up
call each; the two sides' timed calls alternate, so both see the same background load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from dora_jax import rollout
from dora_jax.models import hf

HF_CONFIG = dict(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=1,
                 eos_token_id=2, pad_token_id=0)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def median_seconds(fns, runs: int) -> list[float]:
    """Median wall time of each function; runs alternate between them so both see the same machine load."""
    for fn in fns:
        fn()  # warm-up: compilation (ours), allocator and kernel selection (both)
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def run(batch: int, prompt_len: int, new_tokens: int, runs: int, model, lm) -> dict:
    rng = np.random.default_rng(batch)
    prompt = rng.integers(3, HF_CONFIG["vocab_size"], (batch, prompt_len)).astype(np.int32)
    mask = np.ones_like(prompt)
    keys = jax.random.split(jax.random.key(0), batch)
    prompt_j, mask_j = jax.device_put(prompt), jax.device_put(mask)

    def ours():
        out = rollout.sample(lm.config, (lm.params,), prompt_j, mask_j, keys, max_new_tokens=new_tokens)
        assert int(out.lengths_B.min()) == new_tokens
        jax.block_until_ready(out)

    prompt_t, mask_t = torch.from_numpy(prompt.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def theirs():
        with torch.inference_mode():
            out = model.generate(input_ids=prompt_t, attention_mask=mask_t, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
        assert out.shape == (batch, prompt_len + new_tokens)

    new = batch * new_tokens
    ours_tps, theirs_tps = (new / t for t in median_seconds([ours, theirs], runs))
    return {"batch": batch, "prompt": prompt_len, "new_tokens": new_tokens, "ours_tok_s": ours_tps,
            "transformers_tok_s": theirs_tps, "ratio": ours_tps / theirs_tps}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="4,32", help="comma-separated batch sizes")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="new tokens per row")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per side (median reported)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**HF_CONFIG)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        lm = hf.load(tmp)

    device = f"{jax.devices()[0].platform} {cpu_name()} x{os.cpu_count()}"
    config = "qwen2 L{num_hidden_layers} D{hidden_size} F{intermediate_size} H{num_attention_heads}/{num_key_value_heads} " \
             "V{vocab_size}".format(**HF_CONFIG)
    results = []
    print(f"{'device':<28} {'config':<32} {'batch':>5} {'ours tok/s':>11} {'transformers tok/s':>19} {'ratio':>6}")
    for batch in (int(b) for b in args.batch.split(",")):
        r = dict(device=device, config=config, **run(batch, args.prompt, args.new, args.runs, model, lm))
        results.append(r)
        print(f"{device:<28} {config:<32} {batch:>5} {r['ours_tok_s']:>11.0f} {r['transformers_tok_s']:>19.0f} "
              f"{r['ratio']:>6.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
