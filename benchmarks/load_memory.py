"""Peak host memory of `hf.load` relative to the checkpoint's size on disk.

    python benchmarks/load_memory.py                 # Qwen2.5-1.5B-sized random bf16 checkpoint (~3.1 GB)
    python benchmarks/load_memory.py --size=tiny     # ~60 MB, seconds

Writes a random checkpoint of the given shape (one tensor in memory at a time), then loads
it in a fresh subprocess and reports the peak resident-set growth during `hf.load`
(VmHWM after minus VmRSS before, from /proc/self/status) divided by the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SIZES = {
    "1.5B": dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                 num_kv_heads=2, head_dim=128, qkv_bias=True, tie_word_embeddings=True),
    "tiny": dict(vocab_size=32_000, hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8,
                 num_kv_heads=2, head_dim=64, qkv_bias=True, tie_word_embeddings=False),
}

_CHILD = r"""
import json, sys
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import jax, jax.numpy as jnp
jnp.zeros(8).block_until_ready()
from dora_jax.models import hf
before = status("VmRSS:")
lm = hf.load(sys.argv[1], dtype=sys.argv[2])
jax.block_until_ready(lm.params)
print(json.dumps({"rss_before": before, "peak": status("VmHWM:"), "after": status("VmRSS:")}))
"""


def measure(model_dir: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, model_dir, dtype], check=True, capture_output=True, text=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    size = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    stats["checkpoint_bytes"] = size
    stats["peak_growth_over_size"] = (stats["peak"] - stats["rss_before"]) / size
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="1.5B")
    parser.add_argument("--dtype", default="bfloat16", help="checkpoint and load dtype")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    from dora_jax.models import ModelConfig, hf
    config = ModelConfig(**SIZES[args.size], param_dtype=args.dtype, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_random(config, tmp, max_shard_bytes=2 << 30)
        stats = measure(tmp, args.dtype)
    stats.update(size=args.size, dtype=args.dtype, params=config.num_params())
    gib = 1 << 30
    print(f"hf.load {args.size} ({config.num_params() / 1e9:.2f}B params, {args.dtype}): "
          f"checkpoint {stats['checkpoint_bytes'] / gib:.2f} GiB, peak RSS growth "
          f"{(stats['peak'] - stats['rss_before']) / gib:.2f} GiB = {stats['peak_growth_over_size']:.2f}x the checkpoint")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=2)


if __name__ == "__main__":
    main()
