"""Decode throughput of `dora_jax.rollout.sample` vs Hugging Face `generate`, same weights.

    python benchmarks/sampler.py                         # batch 4 and 32, under a minute on 2 CPU cores
    python benchmarks/sampler.py --batch=4 --json=out.json
    python benchmarks/sampler.py --size=0.5b --dtype=bfloat16 --batch=64   # a GPU, with a CUDA build of torch

Builds a random `transformers.Qwen2ForCausalLM` (by default 4 layers, width 256, vocabulary
1024; `--size` picks another of `_shared.SIZES`), saves it and loads the same weights with
`dora_jax.models.hf.load`, both sides in `--dtype`. Both sides sample
`--new` tokens after a `--prompt`-token prompt at temperature 1 with no top-k / top-p and
no stop ids (every row runs the full length). Reported: new tokens per second over the
whole call (prefill included), median of `--runs` timed calls per side after one warm-up
call each; the two sides' timed calls alternate, so both see the same background load.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import torch

from _shared import SIZES, config_name, device_name, median_seconds, random_qwen2
from dora_jax import rollout


def run(batch: int, prompt_len: int, new_tokens: int, runs: int, model, lm) -> dict:
    rng = np.random.default_rng(batch)
    prompt = rng.integers(3, lm.config.vocab_size, (batch, prompt_len)).astype(np.int32)
    mask = np.ones_like(prompt)
    keys = jax.random.split(jax.random.key(0), batch)
    prompt_j, mask_j = jax.device_put(prompt), jax.device_put(mask)

    def ours():
        out = rollout.sample(lm.config, (lm.params,), prompt_j, mask_j, keys, max_new_tokens=new_tokens)
        assert int(out.lengths_B.min()) == new_tokens
        jax.block_until_ready(out)

    prompt_t = torch.from_numpy(prompt.astype(np.int64)).to(model.device)
    mask_t = torch.from_numpy(mask.astype(np.int64)).to(model.device)

    def theirs():
        with torch.inference_mode():
            out = model.generate(input_ids=prompt_t, attention_mask=mask_t, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
        assert out.shape == (batch, prompt_len + new_tokens)
        if model.device.type == "cuda":
            torch.cuda.synchronize()

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
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="random Qwen2 shape (_shared.SIZES)")
    parser.add_argument("--dtype", default="float32", help="both sides' weights and compute (bfloat16 on GPUs)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    model, lm = random_qwen2(dtype=args.dtype, **SIZES[args.size])
    if jax.devices()[0].platform == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("JAX runs on a GPU but this torch has no CUDA: generate would run on the CPU. Install "
                             "a CUDA build of torch to compare on the GPU.")
        model = model.to("cuda")
    model = model.to(getattr(torch, args.dtype))
    device = device_name()
    config = config_name(**SIZES[args.size]) + ("" if args.dtype == "float32" else f" {args.dtype}")
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
