"""Accelerator efficiency: model FLOPs utilisation of the update step and decode bandwidth roofline.

    python benchmarks/accelerator.py --size=0.5b --json=out.json      # a GPU or TPU, bfloat16
    python benchmarks/accelerator.py --size=1.5b
    python benchmarks/accelerator.py --size=tiny --peak_tflops=1 --hbm_gbps=50   # CPU: a check of the plumbing

A random model of Qwen2.5-0.5B's or -1.5B's shape (`_shared.SIZES`, written once with
`hf.save_random`, never downloaded), loaded as ref, Nora and Dora by the `Trainer` in `--dtype`
compute (float32 master weights), on one device.

Update MFU. One `dora_indicator` update on B = `--prompts` x `--group` rows of T = prompt +
response tokens: ref and Nora forward, Dora forward + backward, AdamW. Model FLOPs, the
PaLM convention (rematerialisation not counted, causal masking not discounted):

    forward FLOPs / token = 2 N + 4 L H Dh T        N: matmul parameters (the embedding lookup excluded,
                                                    the output head included)
    update FLOPs          = 5 x forward FLOPs / token x B T   (ref 1 + Nora 1 + Dora 3: forward, 2 x backward)
    MFU                   = update FLOPs / (median update seconds x peak FLOP/s)

Decode roofline. `rollout.sample` of `--decode_batch` rows, prompt P = `--prompt_len`, n =
`--new_tokens`. Each decode step must read every weight once and the KV cache up to its
position, so over steps 2..n (the first is timed with the prefill and subtracted):

    bytes(step at context s) = W + 2 L B s K Dh b       W: weight bytes in the compute dtype, b: its bytes
    bound seconds            = sum over s = P+1 .. P+n-1 of bytes(s) / HBM bytes per second
    fraction of roofline     = bound seconds / (t(n new tokens) - t(1 new token))

Peak FLOP/s and HBM bandwidth come from a table of known devices (dense bf16, vendor figures);
`--peak_tflops` / `--hbm_gbps` override them (needed on CPU). Prints the figures; `--json` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax
import numpy as np

from _shared import SIZES, device_name, hf_config, median_seconds, single_device_trainer, timed_update, update_flops
from dora_jax import rollout
from dora_jax.models import ModelConfig, hf
from dora_jax.testing import random_batch

# device_kind prefix -> (dense bf16 TFLOP/s, HBM GB/s), vendor figures (SXM parts for NVIDIA).
PEAKS = {"NVIDIA H200": (989.0, 4800.0), "NVIDIA H100 PCIe": (756.0, 2000.0), "NVIDIA H100": (989.0, 3350.0),
         "NVIDIA A100-SXM4-80GB": (312.0, 2039.0), "NVIDIA A100": (312.0, 1555.0), "TPU v4": (275.0, 1200.0),
         "TPU v5 lite": (197.0, 819.0), "TPU v5e": (197.0, 819.0), "TPU v5p": (459.0, 2765.0),
         "TPU v6 lite": (918.0, 1640.0), "TPU v6e": (918.0, 1640.0)}


def model_config(size: str, dtype: str) -> ModelConfig:
    """float32 master weights, `dtype` compute."""
    return ModelConfig.from_hf_dict(hf_config(size)).replace(dtype=dtype)


def decode_bound_seconds(c: ModelConfig, batch: int, prompt_len: int, new_tokens: int, hbm_bytes_s: float) -> float:
    """Lower bound on the time of decode steps 2..n: weights and the KV cache so far read once per step."""
    b = np.dtype(jax.numpy.dtype(c.dtype)).itemsize
    weights = c.matmul_params() * b
    kv_per_position = 2 * c.num_layers * batch * c.num_kv_heads * c.head_dim * b
    return sum(weights + kv_per_position * s for s in range(prompt_len + 1, prompt_len + new_tokens)) / hbm_bytes_s


def peaks(args) -> tuple[float | None, float | None]:
    """(peak FLOP/s, HBM bytes/s) of device 0: the flags, else the table, else None."""
    kind = jax.devices()[0].device_kind
    known = next((v for k, v in PEAKS.items() if kind.startswith(k)), (None, None))
    tflops = args.peak_tflops or known[0]
    gbps = args.hbm_gbps or known[1]
    return (tflops and tflops * 1e12), (gbps and gbps * 1e9)


def update_mfu(model_dir: str, mc: ModelConfig, args, peak_flops: float | None) -> dict:
    trainer = single_device_trainer(model_dir, args.group, args.response_len, dtype=args.dtype,
                                    remat=bool(args.remat), unroll_layers=False)
    batch = random_batch(np.random.default_rng(0), vocab_size=mc.vocab_size, prompts=args.prompts,
                         group_size=args.group, prompt_len=args.prompt_len, response_len=args.response_len)
    (seconds,) = median_seconds([timed_update(trainer, batch)], args.runs)
    B, T = batch.tokens_BxT.shape
    flops = update_flops(mc, B, args.prompt_len, args.response_len)
    return {"update_batch": B, "update_length": T, "update_seconds": seconds, "update_tflops": flops / seconds / 1e12,
            "update_mfu": flops / seconds / peak_flops if peak_flops else None}


def decode_roofline(model_dir: str, args, hbm: float | None) -> dict:
    lm = hf.load(model_dir, dtype=args.dtype)  # weights stored in the compute dtype, as a sampler holds them
    B, P, n = args.decode_batch, args.prompt_len, args.new_tokens
    rng = np.random.default_rng(0)
    prompt = jax.device_put(rng.integers(3, lm.config.vocab_size, (B, P)).astype(np.int32))
    mask = jax.device_put(np.ones((B, P), np.int32))
    keys = jax.random.split(jax.random.key(0), B)

    def sample(new):
        return lambda: jax.block_until_ready(rollout.sample(lm.config, (lm.params,), prompt, mask, keys,
                                                            max_new_tokens=new))

    t_n, t_1 = median_seconds([sample(n), sample(1)], args.runs)  # alternating, under the same load
    decode_s = t_n - t_1
    if decode_s <= 0:
        raise SystemExit(f"decoding {n - 1} more tokens took no measurable time ({decode_s:.4f} s); "
                         "raise --new_tokens or --runs.")
    bound = decode_bound_seconds(lm.config, B, P, n, hbm) if hbm else None
    return {"decode_batch": B, "decode_tok_s": B * (n - 1) / decode_s, "decode_step_ms": 1e3 * decode_s / (n - 1),
            "decode_roofline_fraction": bound / decode_s if bound else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype of the update and of the sampler")
    parser.add_argument("--prompts", type=int, default=8, help="update: prompts per batch")
    parser.add_argument("--group", type=int, default=8, help="update: responses per prompt")
    parser.add_argument("--prompt_len", type=int, default=256)
    parser.add_argument("--response_len", type=int, default=768, help="update: response tokens per row")
    parser.add_argument("--remat", type=int, default=1, help="update: rematerialise each layer (1) or not (0)")
    parser.add_argument("--decode_batch", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=128, help="decode: new tokens per row")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per figure (median)")
    parser.add_argument("--peak_tflops", type=float, help="override the device's dense peak (TFLOP/s)")
    parser.add_argument("--hbm_gbps", type=float, help="override the device's memory bandwidth (GB/s)")
    parser.add_argument("--json")
    args = parser.parse_args()
    peak_flops, hbm = peaks(args)
    mc = model_config(args.size, args.dtype)
    with tempfile.TemporaryDirectory() as model_dir:
        hf.save_random(mc, model_dir)
        r = {"device": device_name(), "size": args.size, "dtype": args.dtype, "matmul_params": mc.matmul_params(),
             "peak_tflops": peak_flops and peak_flops / 1e12, "hbm_gbps": hbm and hbm / 1e9,
             **update_mfu(model_dir, mc, args, peak_flops), **decode_roofline(model_dir, args, hbm)}
    print(f"device: {r['device']}   model: random Qwen2 of shape '{args.size}' ({r['matmul_params'] / 1e9:.2f}B matmul "
          f"parameters), {args.dtype}")
    mfu = "n/a (pass --peak_tflops)" if r["update_mfu"] is None else f"{100 * r['update_mfu']:.1f}%"
    print(f"update, batch {r['update_batch']} x {r['update_length']}: {r['update_seconds']:.3f} s, "
          f"{r['update_tflops']:.1f} TFLOP/s, MFU {mfu} (target >= 40% at 1.5b)")
    roof = ("n/a (pass --hbm_gbps)" if r["decode_roofline_fraction"] is None
            else f"{100 * r['decode_roofline_fraction']:.1f}%")
    print(f"decode, batch {r['decode_batch']}: {r['decode_tok_s']:.0f} tok/s, {r['decode_step_ms']:.2f} ms/step, "
          f"HBM roofline {roof} (target >= 50%)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump([r], f, indent=2)


if __name__ == "__main__":
    main()
