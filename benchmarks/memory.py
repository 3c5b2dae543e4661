"""Compiled memory per device of the trainer's update and the inline sampler, next to `launch/plan.py`'s figures.

    python benchmarks/memory.py --config=configs/indicator.py:math --config.ref_dir=DIR \
        --mesh=data=1,fsdp=8,tensor=1 --devices=8 [--config.optim.grad_accum=64] [--json=FILE] [--baseline]
    python benchmarks/memory.py --config=configs/indicator.py:math --model=qwen2.5-1.5b    # a published shape

Compile-only: on `--devices` simulated CPU devices, the real update (`Trainer`'s own
`UpdateLayout`, jitted with its shardings) and the real sampler program (`rollout.sampler`,
one batch of prompts_per_step x group_size rows) are lowered for abstract inputs of the
config's shapes and compiled; nothing is allocated or run. DIR needs only a Hugging Face
`config.json` (no weights are read), so any model shape can be measured on a laptop.

Per device it prints argument, temp and peak bytes from `compiled.memory_analysis()` (peak =
arguments + outputs not aliasing donated arguments + temporaries), the planner's figure and
their ratio, the collectives of the optimized HLO by kind, the largest all-reduces, and the
sampler's KV cache per device as found in the program. `--baseline` adds the update's
per-device temporaries against one device's.
`--model` measures a published shape (`SHAPES`) without a directory.
`--json` writes the same, with `compiled_peak_gib` and `planned_peak_gib` for "update" and
"sampler". The CPU compiler stands in for the accelerator's: it runs some bf16 operations in
f32 (so bf16 temporaries can count double) and schedules differently, so treat the figures as
a layout check and an estimate, not a guarantee.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

# The device count must be set before jax starts.
_DEVICES = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--devices=")), 8)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dora_jax import pipeline, plan, sharding  # noqa: E402

# Published config.json shapes (no weights): Qwen2.5-0.5B, -1.5B and -7B.
_QWEN = dict(model_type="qwen2", max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu",
             torch_dtype="bfloat16")
SHAPES = {
    "qwen2.5-0.5b": dict(_QWEN, vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(_QWEN, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(_QWEN, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/indicator.py:math.",
                                          lock_config=True)
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=8,tensor=1", "Mesh axis sizes; their product is --devices.")
flags.DEFINE_integer("devices", 8, "Simulated CPU devices (read before jax starts).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", None, "Prompt tokens (default: the task's prompt budget).")
_PROGRAMS = flags.DEFINE_list("programs", ["update", "sampler"], "Which programs to compile.")
_MODEL = flags.DEFINE_enum("model", None, list(SHAPES), "A published model shape to measure instead of "
                           "--config.ref_dir (its config.json is written to a temporary directory).")
_JSON = flags.DEFINE_string("json", None, "Write the figures to this JSON file.")
_BASELINE = flags.DEFINE_bool("baseline", False, "Also compile the update on one device and print the ratio of "
                              "per-device temporaries (the mesh's over one device's).")
flags.mark_flags_as_required(["config"])

GiB = plan.GiB


def measure(config, sizes: dict[str, int], programs=("update", "sampler"), prompt_len: int | None = None) -> dict:
    """{program: figures} for `config` on a mesh of `sizes` over the first devices."""
    n = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
    if n > jax.device_count():
        raise ValueError(f"mesh {sizes} needs {n} devices; run with --devices={n}.")
    mesh = sharding.make_mesh(sizes, jax.devices()[:n])
    planned = plan.plan(config, sizes, prompt_len)
    out = {}
    for program in programs:
        compile_fn = {"update": plan.compile_update, "sampler": plan.compile_sampler}[program]
        compiled = compile_fn(config, mesh, prompt_len)
        planned_peak = planned.update_program if program == "update" else planned.sampler_program
        out[program] = {
            "argument_gib": compiled.argument / GiB, "temp_gib": compiled.temp / GiB,
            "output_gib": compiled.output / GiB, "alias_gib": compiled.alias / GiB,
            "compiled_peak_gib": compiled.peak / GiB, "planned_peak_gib": planned_peak / GiB,
            "planned_over_compiled": planned_peak / compiled.peak,
            "collectives": compiled.collectives,
            "largest_all_reduces": [{"shape": s, "mib": b / 2**20} for s, b in compiled.largest_all_reduces],
        }
        if program == "sampler":
            out[program]["kv_cache_gib"] = None if compiled.kv_cache is None else compiled.kv_cache / GiB
            out[program]["kv_cache_total_gib"] = planned.kv_cache * n / GiB if not planned.process_mode else None
    return out


def report(figures: dict, config, sizes: dict[str, int]) -> str:
    c = plan.model_config_of(config)
    lines = [f"{c.num_layers} layers x {c.hidden_size} wide, vocab {c.vocab_size}, compute {c.dtype}, params "
             f"{c.param_dtype}, remat {c.remat}; mesh {sizes}; B = {config.rollout.prompts_per_step} x "
             f"{config.objective.group_size} rows, {config.rollout.max_new_tokens} new tokens, grad_accum "
             f"{config.optim.grad_accum}. Per device, GiB (compiled, not run):",
             f"{'program':<8} {'argument':>9} {'temp':>8} {'peak':>8} {'planned':>8} {'plan/peak':>9}  collectives"]
    for program, f in figures.items():
        coll = ", ".join(f"{k} {v}" for k, v in f["collectives"].items() if v)
        lines.append(f"{program:<8} {f['argument_gib']:>9.2f} {f['temp_gib']:>8.2f} {f['compiled_peak_gib']:>8.2f} "
                     f"{f['planned_peak_gib']:>8.2f} {f['planned_over_compiled']:>9.2f}  {coll or 'none'}")
        if "kv_cache_gib" in f:
            kv = f["kv_cache_gib"]
            lines.append("         KV cache per device: " + ("not found split over the rows" if kv is None else
                         f"{kv:.2f} GiB = total {f['kv_cache_total_gib']:.2f} / {f['kv_cache_total_gib'] / kv:.2f}"))
        if f["largest_all_reduces"]:
            lines.append("         largest all-reduces: " + ", ".join(
                f"{r['shape'].split('{')[0]} ({r['mib']:.1f} MiB)" for r in f["largest_all_reduces"][:3]))
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    if _MODEL.value:
        config.ref_dir = tempfile.mkdtemp()
        with open(os.path.join(config.ref_dir, "config.json"), "w") as f:
            json.dump(SHAPES[_MODEL.value], f)
    sizes = plan.parse_mesh(_MESH.value)
    try:
        figures = measure(config, sizes, tuple(_PROGRAMS.value), _PROMPT_LEN.value)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(report(figures, config, sizes))
    if _BASELINE.value:
        one = plan.compile_update(config, sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
                                  _PROMPT_LEN.value)
        figures["update_single_device_temp_gib"] = one.temp / GiB
        ratio = figures["update"]["temp_gib"] / figures["update_single_device_temp_gib"]
        figures["update_temp_ratio_to_single_device"] = ratio
        print(f"update temp per device: {figures['update']['temp_gib']:.2f} GiB on the mesh vs {one.temp / GiB:.2f} GiB "
              f"on one device: ratio {ratio:.3f} (1/{1 / ratio:.1f})")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"device": "compiled for simulated CPU devices", "mesh": sizes, "figures": figures}, f,
                      indent=1)


if __name__ == "__main__":
    pipeline.launch(main)
