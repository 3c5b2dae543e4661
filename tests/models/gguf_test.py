"""GGUF import: a round trip through a GGUF file this test writes, the packaged SmolLM2 against transformers'
own GGUF loader, and clear errors."""

import os

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from dora_jax.models import convert, gguf_io, hf, safetensors_io
from dora_jax.models.config import ModelConfig, UnsupportedModelError

TINY = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, qkv_bias=False, tie_word_embeddings=False, model_type="llama", rope_theta=10_000.0,
                   rms_norm_eps=1e-5, max_position_embeddings=128)
# Each quantisation the gguf package can write, with the largest error it may leave (relative to max |w|).
QUANTS = {"F32": 0.0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2, "Q5_0": 0.05, "Q4_1": 0.1, "Q4_0": 0.15}


def _write_gguf(path, hf_dir, qtype="F32", arch="llama", extra=None):
    """The weights of HF dir `hf_dir` as a GGUF file, as llama.cpp's converter lays them out."""
    index = safetensors_io.index_dir(hf_dir)
    names = {v: k for k, v in gguf_io._NAMES.items()}
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(TINY.num_layers)
    writer.add_context_length(TINY.max_position_embeddings)
    writer.add_embedding_length(TINY.hidden_size)
    writer.add_feed_forward_length(TINY.intermediate_size)
    writer.add_head_count(TINY.num_heads)
    writer.add_head_count_kv(TINY.num_kv_heads)
    writer.add_layer_norm_rms_eps(TINY.rms_norm_eps)
    writer.add_rope_freq_base(TINY.rope_theta)
    writer.add_vocab_size(TINY.vocab_size)
    kind = gguf.GGMLQuantizationType[qtype]
    for name, info in sorted(index.items()):
        w = np.asarray(safetensors_io.read_tensor(info), np.float32)
        parts = name.split(".")
        template = ".".join(p if not p.isdigit() else "{i}" for p in parts)
        layer = next((p for p in parts if p.isdigit()), None)
        gname = names[template].format(i=layer)
        if parts[-2] in ("q_proj", "k_proj"):
            w = gguf_io.permute_rotary(w, TINY.num_heads if parts[-2] == "q_proj" else TINY.num_kv_heads)
        if w.ndim == 2 and qtype != "F32":  # llama.cpp keeps norms in F32
            writer.add_tensor(gname, gguf.quants.quantize(w, kind), raw_dtype=kind)
        else:
            writer.add_tensor(gname, w)
    for extra_name, value in (extra or {}).items():
        writer.add_tensor(extra_name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny_hf"))
    hf.save_random(TINY, out, seed=3)
    return out


@pytest.mark.parametrize("qtype", sorted(QUANTS))
def test_round_trip_through_gguf(tiny_dir, tmp_path, qtype):
    path = str(tmp_path / "tiny.gguf")
    _write_gguf(path, tiny_dir, qtype)
    out = str(tmp_path / "converted")
    if qtype == "F32":  # what launch/convert.py --src=tiny.gguf runs
        assert convert.convert(path, out).startswith(f"wrote Hugging Face directory {out}")
    config = gguf_io.to_hf_dir(path, out)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 16)
    assert not config.tie_word_embeddings
    original, converted = hf.load(tiny_dir), hf.load(out)
    for (key, a), b in zip(jax_leaves(original.params), [leaf for _, leaf in jax_leaves(converted.params)]):
        a, b = np.asarray(a), np.asarray(b)
        bound = 0.0 if "norm" in key else QUANTS[qtype] * np.abs(a).max()  # norms stay F32
        assert np.abs(a - b).max() <= bound, key
    ids = np.arange(1, 25).reshape(2, 12) % TINY.vocab_size
    logits_a = np.asarray(original.logits(original.params, jnp.asarray(ids)))
    logits_b = np.asarray(converted.logits(converted.params, jnp.asarray(ids)))
    if qtype == "F32":  # exact: the Q/K permutation is undone, not approximated
        np.testing.assert_array_equal(logits_a, logits_b)
    else:
        assert np.abs(logits_a - logits_b).max() < 0.5 * np.abs(logits_a).max()


def jax_leaves(tree):
    import jax

    return [("/".join(str(getattr(k, "key", k)) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_rotary_permutation_is_inverted():
    w = np.arange(8 * 64 * 3, dtype=np.float32).reshape(8 * 64 // 8, -1)
    np.testing.assert_array_equal(gguf_io.unpermute_rotary(gguf_io.permute_rotary(w, 4), 4), w)
    assert not np.array_equal(gguf_io.permute_rotary(w, 4), w)


def test_errors_name_the_cause(tiny_dir, tmp_path):
    path = str(tmp_path / "extra.gguf")
    _write_gguf(path, tiny_dir, extra={"blk.0.attn_gate_extra.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(gguf_io.GGUFError, match="attn_gate_extra.*no place"):
        gguf_io.to_hf_dir(path, str(tmp_path / "out"))
    other = str(tmp_path / "other.gguf")
    _write_gguf(other, tiny_dir, arch="gpt2")
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        gguf_io.to_hf_dir(other, str(tmp_path / "out2"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(gguf_io.GGUFError, match="not a readable GGUF file"):
        gguf_io.to_hf_dir(str(junk), str(tmp_path / "out3"))
    with pytest.raises(FileNotFoundError, match="no packaged model 'nope'"):
        gguf_io.gguf_file("packaged:nope")


def test_unsupported_quantisation_is_refused(tmp_path):
    class Fake:
        name, shape, data = "blk.0.attn_q.weight", (4, 4), None
        tensor_type = gguf.GGMLQuantizationType.IQ2_XXS

    with pytest.raises(gguf_io.GGUFError, match="IQ2_XXS, which is not supported.*Q4_K"):
        gguf_io.dequantize(Fake(), "model.gguf")


@pytest.fixture(scope="session")
def smollm2_dir(build_cache):
    """The packaged SmolLM2-135M-Instruct, converted (the README's set-up installs the package)."""
    return gguf_io.model_dir("packaged:smollm2", str(build_cache))


def test_packaged_smollm2_matches_transformers_gguf_loader(smollm2_dir):
    path = gguf_io.gguf_file("packaged:smollm2")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    chat = [{"role": "user", "content": "Ann has 3 pens and buys 4 more. How many pens does she have?"}]
    ids = np.asarray([tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]])
    assert tokenizer.decode(ids[0]).startswith("<|im_start|>system\n")  # the GGUF's chat template came along
    with torch.no_grad():
        expected = reference(torch.tensor(ids)).logits.numpy()
    lm = hf.load(smollm2_dir)
    ours = np.asarray(lm.logits(lm.params, jnp.asarray(ids)))
    assert np.abs(expected).max() > 10  # real logits: the bound below is meaningful
    assert np.abs(ours - expected).max() <= 1e-3
    # The directory is a normal Hugging Face one: transformers reads it too.
    again = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.tensor(ids)).logits.numpy(), expected, atol=1e-5)
    assert lm.config.eos_token_id == tokenizer.eos_token_id == 2
