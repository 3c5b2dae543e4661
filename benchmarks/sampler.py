"""Decode throughput of `dora_jax.rollout.sample` vs Hugging Face `generate`, same weights.

    python benchmarks/sampler.py                         # batch 4 and 32, a few minutes on 2 CPU cores
    python benchmarks/sampler.py --batch=4 --json=out.json
    python benchmarks/sampler.py --shape=SMOLLM2_DIR --batch=16 --prompt=64 --new=64   # SmolLM2-135M's shape
    python benchmarks/sampler.py --shape=0.5b --dtype=bfloat16 --batch=64   # a GPU, with a CUDA build of torch

Builds a random transformers model of `--shape` (a Qwen2 size of `_shared.SIZES`, by default
"tiny": 4 layers, width 256, vocabulary 1024; or any model's config.json / dir), saves it and
loads the same weights with `dora_jax.models.hf.load`, both sides in `--dtype`. Both sides
sample `--new` tokens after a `--prompt`-token prompt at temperature 1 with no top-k / top-p and
no stop ids (every row runs the full length). Reported: new tokens per second over the whole
call (prefill included), median of `--runs` timed calls after one warm-up call. Each side runs in
its own fresh process (one library's thread pools slow the other's in a shared process), the two
sides alternating for `--rounds` rounds so a slow spell of the machine hits both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import jax
import numpy as np
import torch

from _shared import config_name, device_name, median_seconds, random_model, shape_fields
from dora_jax import rollout


def time_side(side: str, args) -> dict[int, float]:
    """{batch: new tokens per second} of one side, "ours" or "transformers", in this process."""
    model, lm = random_model(shape_fields(args.shape), dtype=args.dtype)
    if side == "transformers":
        if jax.devices()[0].platform == "gpu":
            if not torch.cuda.is_available():
                raise SystemExit("JAX runs on a GPU but this torch has no CUDA: generate would run on the CPU. "
                                 "Install a CUDA build of torch to compare on the GPU.")
            model = model.to("cuda")
        model = model.to(getattr(torch, args.dtype))
    rates = {}
    for batch in (int(b) for b in args.batch.split(",")):
        rng = np.random.default_rng(batch)
        prompt = rng.integers(3, lm.config.vocab_size, (batch, args.prompt)).astype(np.int32)
        mask = np.ones_like(prompt)
        if side == "ours":
            keys = jax.random.split(jax.random.key(0), batch)
            prompt_j, mask_j = jax.device_put(prompt), jax.device_put(mask)

            def call():
                out = rollout.sample(lm.config, (lm.params,), prompt_j, mask_j, keys, max_new_tokens=args.new)
                assert int(out.lengths_B.min()) == args.new
                jax.block_until_ready(out)
        else:
            prompt_t = torch.from_numpy(prompt.astype(np.int64)).to(model.device)
            mask_t = torch.from_numpy(mask.astype(np.int64)).to(model.device)

            def call():
                with torch.inference_mode():
                    out = model.generate(input_ids=prompt_t, attention_mask=mask_t, max_new_tokens=args.new,
                                         min_new_tokens=args.new, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
                assert out.shape == (batch, args.prompt + args.new)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()

        (seconds,) = median_seconds([call], args.runs)
        rates[batch] = batch * args.new / seconds
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="4,32", help="comma-separated batch sizes")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="new tokens per row")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per side and round (median reported)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two sides")
    parser.add_argument("--shape", default="tiny", help="a Qwen2 size of _shared.SIZES, or a config.json / model dir")
    parser.add_argument("--dtype", default="float32", help="both sides' weights and compute (bfloat16 on GPUs)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)  # one side, in a child
    args = parser.parse_args()
    if args.side:
        print(json.dumps(time_side(args.side, args)))
        return
    child = [f"--{k}={v}" for k, v in vars(args).items() if k in ("batch", "prompt", "new", "runs", "shape", "dtype")]
    rates = {"ours": [], "transformers": []}
    for _ in range(args.rounds):
        for side in rates:
            out = subprocess.run([sys.executable, __file__, f"--side={side}", *child], check=True,
                                 capture_output=True, text=True).stdout
            rates[side].append(json.loads(out.strip().splitlines()[-1]))
    device = device_name()
    config = config_name(**shape_fields(args.shape)) + ("" if args.dtype == "float32" else f" {args.dtype}")
    results = []
    print(f"{'device':<28} {'config':<32} {'batch':>5} {'ours tok/s':>11} {'transformers tok/s':>19} {'ratio':>6}")
    for batch in args.batch.split(","):
        ours = float(np.median([r[batch] for r in rates["ours"]]))
        theirs = float(np.median([r[batch] for r in rates["transformers"]]))
        r = {"device": device, "config": config, "batch": int(batch), "prompt": args.prompt, "new_tokens": args.new,
             "ours_tok_s": ours, "transformers_tok_s": theirs, "ratio": ours / theirs,
             "round_ratios": [round(o[batch] / t[batch], 3) for o, t in zip(rates["ours"], rates["transformers"])]}
        results.append(r)
        print(f"{device:<28} {config:<32} {batch:>5} {ours:>11.0f} {theirs:>19.0f} {r['ratio']:>6.2f}  "
              f"per round {r['round_ratios']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
