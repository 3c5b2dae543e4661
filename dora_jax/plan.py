"""Per-device memory plan of a config on a mesh, computed from shapes alone (nothing is allocated).

    figures = plan.plan(config, {"data": 1, "fsdp": 8, "tensor": 1})   # no devices needed
    print(plan.format_plan(figures, device_bytes=80 * 2**30))
    plan.check(figures, device_bytes=80 * 2**30)                        # ValueError if it does not fit

The parameter trees and Dora's train state are the trainer's own: `jax.eval_shape` of the
decoder init and of `init_state` with the optimizer `make_optimizer` builds, laid out by
`sharding.tree_shardings` on an `AbstractMesh` of the requested axis sizes, so a plan for
64 devices runs on a laptop. A leaf's per-device bytes are those of its shard.

Assumptions (what the figures mean):
- ref, Nora and Dora are three separate trees in the ref model's `param_dtype` (the trainer
  loads HF weights in `config.model.param_dtype`; a dora_jax checkpoint keeps its own dtype),
  sharded by `config.mesh.rules`; Adam's moments have the parameters' dtype and sharding.
- Gradients: one parameter-sized tree in `param_dtype`, two with `optim.grad_accum > 1`
  (the accumulator and the micro-batch's gradients).
- Sampler KV cache: B = prompts_per_step * group_size rows, T = prompt length +
  max_new_tokens slots, per layer k and v of [kv_heads, head_dim] in the compute dtype,
  rows sharded by the `batch` rule. In `rollout.mode = "process"` the sampler is a second
  JAX runtime that puts Dora's parameters and its cache unsharded on its first device; both
  are counted there, and sampling runs concurrently with the update. Not modelled: prefill
  activations and the transient copy when a decode phase grows the cache.
- Update activations (an estimate, per micro-batch of B / grad_accum rows, batch-sharded;
  the decoder's attention materialises [B, H, T, T] scores): with `model.remat`, the
  residual stream [B, T, D] at each of the L layer boundaries plus one layer's working
  set (f32 scores and their cotangent, probs, q/k/v/o, three [B, T, F] MLP arrays plus two
  cotangents, four [B, T, D]); without remat, every layer's saved set instead. Plus final
  hidden states of each scored tree and their chunked copy (2 x [B, T, D] each), the f32
  logits of one scoring chunk (`scoring.default_chunk`) as `dora_jax.scoring` forms them
  (logits and log-softmax per tree in the Dora call, plus recompute and cotangent for
  Dora), and weights gathered across `fsdp`: one layer (compute-dtype copy and its
  gradient), and the output heads of the trees scored with Dora (gathered and cast) plus
  Dora's head gradient.
- Batch-sharded activations and caches are the layout the rules ask for. XLA honours it
  only where the decoder's `nn.with_logical_constraint`s are live (traced under
  `jax.sharding.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`); elsewhere it may
  replicate rows on every device and need several times more.
- Peak (`total`): the held trees and optimizer state, plus the larger of the sampling and
  update phases (inline mode, where they alternate) or both (process mode). Host memory,
  XLA workspace and fragmentation are not included: keep some headroom, and note that JAX
  on GPU preallocates only 75% of device memory unless XLA_PYTHON_CLIENT_MEM_FRACTION is raised.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from dora_jax import scoring
from dora_jax import tasks
from dora_jax.models import ModelConfig, checkpoint, hf
from dora_jax.models.lm import boxed_shapes
from dora_jax import sharding
from dora_jax.trainer.state import init_state, make_optimizer
from dora_jax.trainer.step import scored_trees

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of everything the learner holds, and the setting they were computed for."""

    model: ModelConfig
    mesh: dict[str, int]  # axis -> size
    num_params: int  # parameters of one tree
    rows: int  # sequences per update B = prompts_per_step * group_size
    grad_accum: int  # micro-batches per update (B / grad_accum rows each)
    micro_shards: int  # devices a micro-batch's rows are split over (the `batch` rule's axes that divide them)
    prompt_len: int  # P
    seq_len: int  # T = P + max_new_tokens
    process_mode: bool  # the sampler is a separate runtime running alongside the update
    ref_params: int
    nora_params: int
    dora_params: int
    optimizer: int  # Adam mu and nu (plus the step and rng scalars)
    gradients: int
    kv_cache: int
    sampler_params: int  # process mode: the sampler's own unsharded copy of Dora (0 inline)
    activations: int

    @property
    def held(self) -> int:
        return self.ref_params + self.nora_params + self.dora_params + self.optimizer

    @property
    def sampling(self) -> int:
        return self.kv_cache + self.sampler_params

    @property
    def update(self) -> int:
        return self.gradients + self.activations

    @property
    def total(self) -> int:
        """Peak bytes per device (see the module docstring)."""
        phases = self.sampling + self.update if self.process_mode else max(self.sampling, self.update)
        return self.held + phases


def parse_mesh(text: str) -> dict[str, int]:
    """"data=1,fsdp=8,tensor=1" -> {"data": 1, "fsdp": 8, "tensor": 1}; unnamed axes are 1."""
    sizes = dict.fromkeys(sharding.MESH_AXES, 1)
    for part in filter(None, (p.strip() for p in text.split(","))):
        axis, sep, size = part.partition("=")
        if not sep or axis not in sizes or not size.isdigit() or int(size) < 1:
            raise ValueError(f"mesh {text!r}: write AXIS=SIZE pairs with axes {sharding.MESH_AXES} and sizes >= 1, "
                             "e.g. data=1,fsdp=8,tensor=1.")
        sizes[axis] = int(size)
    return sizes


def model_config_of(config) -> ModelConfig:
    """The model the trainer would build: config.json of `ref_dir` (nothing else read) or `config.model`."""
    if not config.ref_dir:
        model_config = ModelConfig(**config.model)
        if not model_config.vocab_size:  # 0 = the task tokenizer's size, as the pipeline fills it in
            model_config = model_config.replace(vocab_size=tasks.make_task(config.task).vocab_size)
        return model_config
    path = os.path.expanduser(config.ref_dir)
    model_config = (checkpoint.read_config(path) if checkpoint.is_checkpoint(path)
                    else hf.read_config(path, config.model.param_dtype))
    return checkpoint.with_compute(model_config, config.model)


def plan(config, mesh: Mapping[str, int] | None = None, prompt_len: int | None = None) -> MemoryPlan:
    """Per-device bytes of `config` on a mesh of the given axis sizes (default `config.mesh`).

    The prompt length is `prompt_len` if given, else `config.task.max_prompt_len`, else
    the task's fixed prompt length.
    """
    sizes = {a: int((mesh or config.mesh)[a]) for a in sharding.MESH_AXES}
    if min(sizes.values()) < 1:
        raise ValueError(f"mesh {sizes}: a plan needs every axis size (-1 means 'all devices', which depends on the "
                         "machine); give them, e.g. --mesh=data=1,fsdp=8,tensor=1.")
    abstract_mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes))
    rules = tuple(tuple(r) for r in config.mesh.rules)
    model_config = model_config_of(config)

    boxed = boxed_shapes(model_config)
    tx = make_optimizer(config.optim, config.trainer.num_steps)
    state = jax.eval_shape(lambda p: init_state(p, tx), boxed)
    state_bytes = _tree_bytes(state, abstract_mesh, rules)
    dora = _tree_bytes(state.params, abstract_mesh, rules)

    P_len = prompt_len or tasks.task_class(config.task.name).prompt_budget(tasks.parse_config(config.task))
    T = P_len + config.rollout.max_new_tokens
    B = config.rollout.prompts_per_step * config.objective.group_size
    M = config.optim.grad_accum
    if B % M:
        raise ValueError(f"rollout.prompts_per_step * objective.group_size = {B} rows do not split into "
                         f"optim.grad_accum = {M} equal micro-batches; make the rows a multiple of grad_accum.")
    process_mode = config.rollout.mode == "process"
    kv_mesh = AbstractMesh((1, 1, 1), sharding.MESH_AXES) if process_mode else abstract_mesh
    kv_cache = 2 * _array_bytes(kv_mesh, rules, ("layers", "batch", "length", "kv_heads", "head_dim"),
                                (model_config.num_layers, B, T, model_config.num_kv_heads, model_config.head_dim),
                                model_config.dtype)
    return MemoryPlan(
        model=model_config, mesh=sizes, num_params=model_config.num_params(), rows=B, grad_accum=M,
        micro_shards=B // M // _shard_shape(abstract_mesh, rules, ("batch",), (B // M,))[0], prompt_len=P_len,
        seq_len=T, process_mode=process_mode,
        ref_params=_tree_bytes(boxed, abstract_mesh, rules, _frozen_dtype(config.ref_dir, config)),
        nora_params=_tree_bytes(boxed, abstract_mesh, rules,
                                _frozen_dtype(config.nora_dir or config.ref_dir, config)),
        dora_params=dora, optimizer=state_bytes - dora, gradients=dora * (1 if M == 1 else 2), kv_cache=kv_cache,
        sampler_params=_tree_bytes(boxed, kv_mesh, rules) if process_mode else 0,
        activations=sum(activation_bytes(model_config, boxed, abstract_mesh, rules, B // M, T,
                                         scored_trees(config.objective)).values()))


def activation_bytes(model_config: ModelConfig, boxed: Any, mesh: AbstractMesh, rules: sharding.Rules, rows: int,
                     seq_len: int, scored: Sequence[str]) -> dict[str, int]:
    """The update step's activation estimate per device, by part (see the module docstring).

    `rows` is the micro-batch, `scored` the trees the update scores ("dora" first).
    """
    c = model_config
    b, T = rows, seq_len

    def act(logical, shape, dtype=c.dtype):
        return _array_bytes(mesh, rules, logical, shape, dtype)

    # Activations are sharded by their batch rows (and tensor-parallel dims); `embed` stays whole.
    x = act(("batch", None, None), (b, T, c.hidden_size))
    scores_f32 = act(("batch", "heads", None, None), (b, c.num_heads, T, T), "float32")
    mlp = act(("batch", None, "mlp"), (b, T, c.intermediate_size))
    layer_saved = (scores_f32 + act(("batch", "heads", None, None), (b, c.num_heads, T, T))
                   + 2 * act(("batch", None, "heads", None), (b, T, c.num_heads, c.head_dim))
                   + 2 * act(("batch", None, "kv_heads", None), (b, T, c.num_kv_heads, c.head_dim))
                   + 3 * mlp + 4 * x)
    backward_extra = scores_f32 + 2 * mlp  # cotangents of the largest pieces
    in_dora_call = 1 + ("nora" in scored)  # scoring scores Dora and Nora together, ref on its own
    # Weights are gathered across fsdp where used: one layer at a time, and the heads of the Dora call's trees.
    no_fsdp = tuple((name, tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a != "fsdp"))
                    for name, axes in rules)
    layer = boxed["layers"]
    head = boxed["embedding" if c.tie_word_embeddings else "lm_head"]
    gathered = (_tree_bytes(layer, mesh, no_fsdp, c.dtype) + _tree_bytes(layer, mesh, no_fsdp)) // c.num_layers
    gathered += (in_dora_call * (_tree_bytes(head, mesh, no_fsdp, c.dtype) + _tree_bytes(head, mesh, no_fsdp))
                 + _tree_bytes(head, mesh, no_fsdp))
    return {
        "residuals": c.num_layers * (x if c.remat else layer_saved),
        "layer": layer_saved + backward_extra if c.remat else backward_extra,
        "hidden": 2 * len(scored) * x,
        "logits": (2 * in_dora_call + 2) * act(("batch", None, "vocab"), (b, scoring.default_chunk(T), c.vocab_size),
                                                  "float32"),
        "gathered_weights": gathered,
    }


def format_plan(figures: MemoryPlan, device_bytes: int | None = None) -> str:
    """A table of GiB per device per item, the peak, and the headroom on a device of `device_bytes`."""
    c, mesh = figures.model, figures.mesh
    pdt, cdt = jnp.dtype(c.param_dtype).name, jnp.dtype(c.dtype).name
    rows = [
        ("ref params", figures.ref_params, f"{figures.num_params:,} params"),
        ("Nora params", figures.nora_params, "frozen"),
        ("Dora params", figures.dora_params, f"{pdt} master copy"),
        ("optimizer state", figures.optimizer, "Adam mu + nu"),
        ("gradients", figures.gradients, f"{1 if figures.grad_accum == 1 else 2} x params  [update]"),
        ("update activations", figures.activations,
         f"{figures.rows // figures.grad_accum} rows x {figures.seq_len} tokens, remat {'on' if c.remat else 'off'}  "
         "[update]"),
        ("sampler KV cache", figures.kv_cache, f"{figures.rows} rows x {figures.seq_len} slots, {cdt}  [sampling]"),
    ]
    if figures.process_mode:
        rows.append(("sampler params", figures.sampler_params, "process mode: unsharded on its device  [sampling]"))
    mode = "sampling + update" if figures.process_mode else "max(sampling, update)"
    rows.append(("total (peak)", figures.total, f"held + {mode}"))
    if device_bytes is not None:
        rows += [("device memory", device_bytes, ""),
                 ("headroom", device_bytes - figures.total, "does NOT fit" if figures.total > device_bytes else "")]
    header = (f"Memory per device: {c.num_layers} layers x {c.hidden_size} wide, vocab {c.vocab_size}, params {pdt}, "
              f"compute {cdt}; mesh {', '.join(f'{a}={n}' for a, n in mesh.items())} ({math.prod(mesh.values())} "
              f"devices); B = {figures.rows} rows, T = {figures.prompt_len} + "
              f"{figures.seq_len - figures.prompt_len} tokens, grad_accum {figures.grad_accum}")
    width = max(len(name) for name, _, _ in rows)
    lines = [header, f"{'item':<{width}}  {'GiB':>8}"]
    for name, value, note in rows:
        if name == "total (peak)":
            lines.append("-" * (width + 10))
        gib = value / GiB
        shown = f"{gib:>8.2f}" if abs(gib) >= 0.01 or not value else f"{gib:>8.1e}"  # tiny configs stay readable
        lines.append(f"{name:<{width}}  {shown}  {note}".rstrip())
    return "\n".join(lines)


def check(figures: MemoryPlan, device_bytes: int) -> None:
    """Raises ValueError naming what does not fit, by how much, and what to change."""
    if figures.total <= device_bytes:
        return
    c = figures.model
    short = figures.total - device_bytes
    params = figures.ref_params + figures.nora_params + figures.dora_params
    in_update = figures.process_mode or figures.update >= figures.sampling
    in_sampling = figures.process_mode or figures.sampling > figures.update

    def large(n: int) -> bool:  # worth changing: at least a tenth of the peak
        return n >= figures.total / 10

    fixes = []
    if large(figures.held + figures.gradients):
        fixes.append(f"shard over more devices (config.mesh.fsdp = {2 * figures.mesh['fsdp']} roughly halves the "
                     f"{_gib(figures.held + figures.gradients)} of parameters, optimizer state and gradients)")
    if jnp.dtype(c.param_dtype) == jnp.float32 and large(params):
        fixes.append("store the trees in bfloat16 (config.model.param_dtype='bfloat16' halves the three trees and "
                     "Adam's moments, at some precision cost for Dora's updates)")
    if in_update and large(figures.activations):
        if not c.remat:
            fixes.append("rematerialise layers in the backward pass (config.model.remat=True)")
        micro = figures.rows // figures.grad_accum
        if micro > figures.micro_shards:
            fixes.append(f"run fewer rows per micro-batch (now {micro}: raise config.optim.grad_accum from "
                         f"{figures.grad_accum} or lower config.rollout.prompts_per_step)")
        else:
            fixes.append(f"shorten the sequences ({figures.seq_len} tokens; attention scores grow with the square: "
                         "lower config.rollout.max_new_tokens)")
    if in_sampling and large(figures.kv_cache):
        fixes.append(f"shrink the sampler's KV cache ({figures.rows} rows x {figures.seq_len} slots: lower "
                     "config.rollout.prompts_per_step or config.rollout.max_new_tokens)")
    if figures.process_mode and large(figures.sampler_params):
        fixes.append("sample inline (config.rollout.mode='inline': the sampler process holds its own unsharded "
                     "copy of Dora)")
    if jnp.dtype(c.dtype) == jnp.float32 and (large(figures.activations) or large(figures.kv_cache)):
        fixes.append("compute in bfloat16 (config.model.dtype='bfloat16' halves activations and the KV cache)")
    items = {"ref + Nora + Dora params": params, "optimizer state": figures.optimizer, "gradients": figures.gradients,
             "update activations": figures.activations, "sampler KV cache": figures.kv_cache,
             "sampler params": figures.sampler_params}
    largest = ", ".join(f"{name} {_gib(value)}" for name, value in sorted(items.items(), key=lambda kv: -kv[1])[:3])
    raise ValueError(
        f"does not fit: the learner needs {_gib(figures.total)} per device at its peak but the device has "
        f"{_gib(device_bytes)}, {_gib(short)} short (largest: {largest}). To fit, "
        + "; or ".join(fixes or ["use devices with more memory"]) + ".")


# ---------------------------------------------------------------------------------------------------- helpers
def _shard_shape(mesh: AbstractMesh, rules: sharding.Rules, logical: tuple, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One device's shard of an array with logical axes `logical` laid out by `rules`."""
    return NamedSharding(mesh, sharding.resolve_spec(P(*logical), shape, mesh, rules)).shard_shape(shape)


def _array_bytes(mesh: AbstractMesh, rules: sharding.Rules, logical: tuple, shape: tuple[int, ...], dtype) -> int:
    return math.prod(_shard_shape(mesh, rules, logical, shape)) * jnp.dtype(dtype).itemsize


def _tree_bytes(boxed_abstract: Any, mesh: AbstractMesh, rules: sharding.Rules, dtype=None) -> int:
    """Per-device bytes of an abstract tree as `sharding.tree_shardings` lays it out (in `dtype` if given)."""
    shardings = sharding.tree_shardings(boxed_abstract, mesh, rules)
    leaves = jax.tree.leaves(nn.unbox(boxed_abstract))
    return sum(math.prod(s.shard_shape(x.shape)) * jnp.dtype(dtype or x.dtype).itemsize
               for s, x in zip(jax.tree.leaves(shardings), leaves))


def _frozen_dtype(path: str, config) -> str:
    """A frozen tree's storage dtype: a dora_jax checkpoint keeps its own, HF weights load as param_dtype."""
    path = os.path.expanduser(path)
    if path and checkpoint.is_checkpoint(path):
        return checkpoint.read_config(path).param_dtype
    return config.model.param_dtype


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"
