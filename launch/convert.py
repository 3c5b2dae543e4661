r"""Convert between Hugging Face model directories and dora_jax checkpoints.

    python launch/convert.py --src=path/to/hf_dir --dst=ckpt_dir            # HF -> dora_jax
    python launch/convert.py --src=ckpt_dir --dst=hf_out --dtype=bfloat16   # dora_jax -> HF

The direction is read from `--src`: a directory with `config.json` and safetensors is HF,
one with `model_config.json` is a dora_jax checkpoint.
"""

from absl import flags

from dora_jax import pipeline
from dora_jax.models import convert

_SRC = flags.DEFINE_string("src", None, "source directory (HF model dir or dora_jax checkpoint)", required=True)
_DST = flags.DEFINE_string("dst", None, "destination directory", required=True)
_DTYPE = flags.DEFINE_string("dtype", None, "parameter dtype to write (default: keep the source's)")


def main(argv):
    del argv
    print(convert.convert(_SRC.value, _DST.value, _DTYPE.value))


if __name__ == "__main__":
    pipeline.launch(main)
