r"""Convert between Hugging Face model directories and dora_jax checkpoints.

    python launch/convert.py --src=path/to/hf_dir --dst=ckpt_dir            # HF -> dora_jax
    python launch/convert.py --src=ckpt_dir --dst=hf_out --dtype=bfloat16   # dora_jax -> HF

    python launch/convert.py --src=model.Q4_K_M.gguf --dst=hf_dir                 # GGUF -> HF (dequantized)
    python launch/convert.py --src=packaged:smollm2 --dst=smollm2                   # the packaged SmolLM2-135M

The direction is read from `--src`: a directory with `config.json` and safetensors is HF,
one with `model_config.json` is a dora_jax checkpoint, a `.gguf` file (llama.cpp's format,
Llama or Qwen2) or `packaged:NAME` becomes a HF directory with its tokenizer and chat template.
"""

from absl import flags

from dora_jax import pipeline
from dora_jax.models import convert

_SRC = flags.DEFINE_string("src", None, "source: HF model dir, dora_jax checkpoint, .gguf file or packaged:NAME",
                           required=True)
_DST = flags.DEFINE_string("dst", None, "destination directory", required=True)
_DTYPE = flags.DEFINE_string("dtype", None, "parameter dtype to write (default: keep the source's)")


def main(argv):
    del argv
    print(convert.convert(_SRC.value, _DST.value, _DTYPE.value))


if __name__ == "__main__":
    pipeline.launch(main)
