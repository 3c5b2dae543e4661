"""HF import/export: logit parity with transformers, round trips, and clear errors."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from dora_jax.models import hf
from dora_jax.models.config import UnsupportedModelError
from dora_jax.models.safetensors_io import CorruptCheckpointError
from tests import hf_models

B, T = 3, 11


def _batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, :4] = 0  # left padding of different lengths
    mask[2, :7] = 0
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


@pytest.fixture(scope="module", params=sorted(hf_models.FAMILIES))
def family_dir(request, tmp_path_factory):
    out = str(tmp_path_factory.mktemp(request.param))
    model = hf_models.build(request.param, out)
    return request.param, out, model


def test_logits_match_transformers(family_dir):
    _, path, model = family_dir
    lm = hf.load(path, dtype="float32")
    ids, mask = _batch(lm.config.vocab_size)
    ours = np.asarray(lm.logits(lm.params, ids))
    ref = hf_models.torch_logits(model, ids)
    assert np.abs(ref).max() > 1.0  # logits are O(1): the tolerance below is meaningful
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

    ours_padded = np.asarray(lm.logits(lm.params, ids, mask))
    ref_padded = hf_models.torch_logits(model, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(ours_padded[valid] - ref_padded[valid]).max() <= 1e-4
    # Padding changes nothing for real tokens: row 2 alone, unpadded, gives the same logits.
    alone = np.asarray(lm.logits(lm.params, ids[2:3, 7:]))
    np.testing.assert_allclose(ours_padded[2, 7:], alone[0], atol=1e-5)


def test_save_reload_in_transformers(family_dir, tmp_path):
    _, path, _ = family_dir
    lm = hf.load(path)
    out = str(tmp_path / "saved")
    hf.save(lm, lm.params, out)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids, mask = _batch(lm.config.vocab_size, seed=1)
    ours = np.asarray(lm.logits(lm.params, ids, mask))
    ref = hf_models.torch_logits(reloaded, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(ours[valid] - ref[valid]).max() <= 1e-4


def test_sharded_save_round_trip(tmp_path):
    src = str(tmp_path / "src")
    hf_models.build("qwen2_untied", src)
    lm = hf.load(src)
    out = str(tmp_path / "sharded")
    hf.save(lm, lm.params, out, max_shard_bytes=20_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2 and os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    again = hf.load(out)
    flat_a = {k: np.asarray(v) for k, v in _flatten(lm.params).items()}
    flat_b = {k: np.asarray(v) for k, v in _flatten(again.params).items()}
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k])


def test_bfloat16_load(tmp_path):
    src = str(tmp_path / "src")
    model = hf_models.build("qwen2_tied", src)
    lm = hf.load(src, dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in _flatten(lm.params).values())
    ids, _ = _batch(lm.config.vocab_size)
    ours = np.asarray(lm.logits(lm.params, ids))
    assert ours.dtype == np.float32
    ref = hf_models.torch_logits(model, ids)
    assert np.abs(ours - ref).max() < 0.15 * np.abs(ref).max()  # bf16 is close, not exact


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


# ----------------------------------------------------------------------------- errors
@pytest.fixture
def good_dir(tmp_path):
    path = str(tmp_path / "good")
    hf_models.build("qwen2_tied", path)
    return path


def test_unsupported_model_type_names_file(good_dir):
    cfg_path = os.path.join(good_dir, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(UnsupportedModelError, match=r"config\.json.*'gpt2'.*qwen2"):
        hf.load(good_dir)


def test_missing_dir_and_files(tmp_path, good_dir):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        hf.load(str(tmp_path / "nope"))
    os.remove(os.path.join(good_dir, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        hf.load(good_dir)
    os.remove(os.path.join(good_dir, "config.json"))
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        hf.load(good_dir)


def test_truncated_and_corrupt_weights_name_the_file(good_dir):
    path = os.path.join(good_dir, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 100])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors.*truncated"):
        hf.load(good_dir)
    open(path, "wb").write(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors.*not valid JSON"):
        hf.load(good_dir)


def test_shape_mismatch_names_tensor(good_dir):
    cfg_path = os.path.join(good_dir, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["intermediate_size"] = 96
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(CorruptCheckpointError, match=r"gate_proj\.weight.*config\.json implies"):
        hf.load(good_dir)


def test_tokenizer_files_travel_on_save(good_dir, tmp_path):
    shutil.copy(os.path.join(good_dir, "config.json"), os.path.join(good_dir, "tokenizer_config.json"))
    lm = hf.load(good_dir)
    out = str(tmp_path / "out")
    hf.save(lm, lm.params, out)
    assert os.path.exists(os.path.join(out, "tokenizer_config.json"))


def test_load_peak_memory_is_near_one_copy(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "mem.json"
    script = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "load_memory.py")
    subprocess.run([sys.executable, script, "--size=tiny", f"--json={out}"], check=True, capture_output=True)
    stats = json.load(open(out))
    assert stats["peak_growth_over_size"] < 2.0, stats


def test_non_finite_weights_are_named(tmp_path):
    from dora_jax.models import ModelConfig, checkpoint

    config = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                         num_kv_heads=1, head_dim=8, qkv_bias=True)
    hf.save_random(config, str(tmp_path / "good"))
    lm = hf.load(str(tmp_path / "good"))
    params = dict(lm.params, layers=dict(lm.params["layers"]))
    params["layers"]["mlp"] = dict(params["layers"]["mlp"])
    params["layers"]["mlp"]["up_kernel"] = params["layers"]["mlp"]["up_kernel"].at[1, 0, 0].set(np.nan)
    hf.save(lm, params, str(tmp_path / "nan_hf"))
    with pytest.raises(CorruptCheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' holds NaN"):
        hf.load(str(tmp_path / "nan_hf"))
    checkpoint.save(str(tmp_path / "nan_ckpt"), config, params)
    with pytest.raises(ValueError, match=r"parameter \['layers'\]\['mlp'\]\['up_kernel'\] holds NaN"):
        checkpoint.load(str(tmp_path / "nan_ckpt"))
