"""How sensitive bfloat16 compute is on a CPU, on the packaged SmolLM2-135M-Instruct (docs/real_model.md).

    python benchmarks/bf16_sensitivity.py [--cache_dir=~/.cache/dora_jax]

On 8 held-out word-problem prompts, prints: the largest logit and the bf16-vs-f32 logit gap of the
same weights; whether the weights loaded from the HF directory (Ref's path) and from a dora_jax
checkpoint (Nora's path) are bit-identical and give the same bf16 logits; and what a nudge of
1e-6 of each weight's size does to f32 and to bf16 logits, with the share of bf16-rounded weights
it changes.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from dora_jax.models import checkpoint, forward, gguf_io, hf
from dora_jax.tasks import default_config, make_task


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default="~/.cache/dora_jax")
    args = parser.parse_args()
    model_dir = gguf_io.model_dir("packaged:smollm2", args.cache_dir)
    cfg = default_config("word_problems")
    cfg.tokenizer_dir = model_dir
    prompt, mask = make_task(cfg).prompts(make_task(cfg).splits["eval"][:8])

    def logits(lm, params, dtype):
        return np.asarray(forward(lm.config.replace(dtype=dtype), params, jnp.asarray(prompt), jnp.asarray(mask)))[mask > 0]

    lm = hf.load(model_dir, "float32")
    l32, l16 = logits(lm, lm.params, "float32"), logits(lm, lm.params, "bfloat16")
    print(f"largest |logit| {np.abs(l32).max():.1f}; bf16 vs f32: max diff {np.abs(l16 - l32).max():.3f}, "
          f"argmax agreement {(l16.argmax(-1) == l32.argmax(-1)).mean():.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(tmp + "/ckpt", lm.config, lm.params)
        compute = ConfigDict(dict(dtype="bfloat16", param_dtype="float32", remat=False, unroll_layers=False,
                                  attention_chunk=512))
        nora = checkpoint.load_policy(tmp + "/ckpt", compute)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(lm.params), jax.tree.leaves(nora.params)))
    print(f"HF path vs dora_jax checkpoint: parameters bit-identical {same}; bf16 logits max diff "
          f"{np.abs(logits(lm, nora.params, 'bfloat16') - l16).max():.3f}")
    rng = np.random.default_rng(0)
    nudged = jax.tree.map(lambda w: w * (1 + 1e-6 * rng.standard_normal(w.shape).astype(np.float32)), lm.params)
    n32, n16 = logits(lm, nudged, "float32"), logits(lm, nudged, "bfloat16")
    flips = sum(int(np.sum(np.asarray(a.astype(jnp.bfloat16)) != np.asarray(b.astype(jnp.bfloat16))))
                for a, b in zip(jax.tree.leaves(lm.params), jax.tree.leaves(nudged)))
    total = sum(a.size for a in jax.tree.leaves(lm.params))
    print(f"nudge of 1e-6: f32 logits max diff {np.abs(n32 - l32).max():.5f}; bf16 logits max diff "
          f"{np.abs(n16 - l16).max():.3f}, argmax agreement {(n16.argmax(-1) == l16.argmax(-1)).mean():.3f}; "
          f"bf16 weights changed {flips / total:.1%}")


if __name__ == "__main__":
    main()
