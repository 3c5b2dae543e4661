"""dora_jax's own parameter checkpoints: an orbax tree plus the model config.

    <dir>/model_config.json   ModelConfig as JSON
    <dir>/params/             orbax (tensorstore) checkpoint of the parameter tree

Orbax writes shards in parallel and restores straight into any sharding, so this is the
format the trainer uses; `launch/convert.py` moves between it and HF directories.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from dora_jax import distributed
from dora_jax.models import hf
from dora_jax.models.config import ModelConfig
from dora_jax.models.lm import LM, Params, param_shapes

CONFIG_FILE = "model_config.json"


def save(out_dir: str, config: ModelConfig, params: Params) -> None:
    """Every process of a multi-process run calls it (orbax coordinates them); process 0 writes the config."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, "params"), params, force=True)
    if distributed.is_chief():
        with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
            f.write(config.to_json())


def is_checkpoint(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG_FILE))


def read_config(ckpt_dir: str) -> ModelConfig:
    """The model config a checkpoint was saved with (no weights read)."""
    with open(os.path.join(ckpt_dir, CONFIG_FILE)) as f:
        return ModelConfig.from_json_dict(json.load(f))


def with_compute(config: ModelConfig, model) -> ModelConfig:
    """`config` with the compute dtype and layer options of `model` (the config's model section)."""
    return config.replace(dtype=model.dtype, remat=model.remat, unroll_layers=model.unroll_layers,
                          attention_chunk=model.attention_chunk)


def load(ckpt_dir: str, shardings=None) -> LM:
    """Restores an `LM`; `shardings` (a tree of `jax.sharding.Sharding`) places the params directly."""
    ckpt_dir = os.path.abspath(ckpt_dir)
    cfg_path = os.path.join(ckpt_dir, CONFIG_FILE)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: missing; {ckpt_dir} is not a dora_jax model checkpoint "
                                "(for a Hugging Face directory use dora_jax.models.hf.load).")
    config = read_config(ckpt_dir)
    target = param_shapes(config)
    if shardings is None:  # whole, on this process's first device (a checkpoint may have been written sharded)
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), target)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), target, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(ckpt_dir, "params"), target)
    finite = distributed.to_host(jax.jit(lambda t: jax.tree.map(lambda x: jax.numpy.isfinite(x).all(), t))(params))
    bad = [jax.tree_util.keystr(path) for path, ok in jax.tree_util.tree_leaves_with_path(finite) if not ok]
    if bad:
        raise ValueError(f"{ckpt_dir}: parameter {bad[0]} holds NaN or infinite values"
                         f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}; the checkpoint is corrupt. "
                         "Use an earlier export or retrain it.")
    return LM(config=config, params=params)


def load_policy(path: str, model, shardings=None) -> LM:
    """A dora_jax checkpoint or HF directory, with the compute dtype and layer options of `model` (config.model);
    `shardings` places each parameter's shards straight on their devices."""
    lm = load(path, shardings) if is_checkpoint(path) else hf.load(path, dtype=model.param_dtype, shardings=shardings)
    lm.config = with_compute(lm.config, model)
    return lm
