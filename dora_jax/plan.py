"""Per-device memory plan of a config on a mesh, computed from shapes alone (nothing is allocated).

    figures = plan.plan(config, {"data": 1, "fsdp": 8, "tensor": 1})   # no devices needed
    print(plan.format_plan(figures, device_bytes=80 * 2**30))
    plan.check(figures, device_bytes=80 * 2**30)                        # ValueError if it does not fit

The parameter trees and Dora's train state are the trainer's own: `jax.eval_shape` of the
decoder init and of `init_state` with the optimizer `make_optimizer` builds, laid out by
`sharding.tree_shardings` on an `AbstractMesh` of the requested axis sizes, so a plan for
64 devices runs on a laptop. A leaf's per-device bytes are those of its shard.

Assumptions (what the figures mean):
- ref, Nora and the policy are three trees in the ref model's `param_dtype` (the trainer
  loads HF weights in `config.model.param_dtype`; a dora_jax checkpoint keeps its own dtype),
  laid out by `config.mesh.rules`. Adam's moments and the accumulated gradients (two
  parameter-sized trees: accumulator and micro-batch) are split over every row device,
  `data` included (`Layout.spread_rules`, ZeRO-1).
- Sampler: KV cache of B = prompts_per_step * group_size rows and T = prompt + max_new_tokens
  slots, per layer k and v of [kv_heads, head_dim] in the compute dtype, rows split by the
  `batch` rule; and the policy in the compute dtype gathered over the row axes for
  decoding, plus, with bf16 compute, the f32 weight copies the CPU compiler hoists out of the
  decode loop for its f32 matmuls (about 60% of an f32 copy, measured). In
  `rollout.mode = "process"` the sampler is a second JAX runtime that holds the policy and
  its cache unsharded on its first device, running alongside the update.
- Update activations, per micro-batch of B / grad_accum rows split over the row axes: with
  `model.remat`, the residual stream at each layer boundary (compute dtype, plus a float32
  copy the CPU compiler keeps), and one layer recomputed and differentiated (three f32
  [rows, T, F] MLP buffers, three f32 [rows, heads, attention_chunk, T] score blocks);
  the final hidden states of each scored tree; the vocabulary-parallel head's f32 logits
  chunks (five [B / grad_accum, chunk, V / devices] buffers); one layer's weights gathered,
  cast and differentiated (three f32 copies).
- The counts of working buffers are those of the compiled update on the XLA CPU compiler
  (`benchmarks/memory.py` compiles it, compile-only, on simulated devices): the model is
  within 15% of the compiled peak for Qwen2.5-0.5B, -1.5B and -7B shapes at the `:math`
  setting and for a small test model (tests/sharding_test.py). Accelerator compilers keep
  bf16 buffers in bf16 where the CPU one widens some to f32, so the figures err high there.
- Peak (`total`): the held trees and optimizer state, plus the larger of the sampling and
  update phases (inline mode, where they alternate) or both (process mode). Host memory,
  XLA workspace and fragmentation are not included: keep some headroom, and note that JAX
  on GPU preallocates only 75% of device memory unless XLA_PYTHON_CLIENT_MEM_FRACTION is raised.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from dora_jax import scoring
from dora_jax import tasks
from dora_jax.models import ModelConfig, checkpoint
from dora_jax.models.decoder import CACHE_AXES
from dora_jax.models.lm import boxed_shapes, param_shapes
from dora_jax import sharding
from dora_jax.batch import RolloutBatch
from dora_jax.rollout import sampler
from dora_jax.trainer.loop import UpdateLayout, model_config_of as trainer_model_config, update_of
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
    sampler_params: int  # the compute copy decoding reads (+ process mode: the sampler's own unsharded copy)
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
    def update_program(self) -> int:
        """Peak of the update program alone: every held tree is its argument (benchmarks/memory.py compares)."""
        return self.held + self.update

    @property
    def sampler_program(self) -> int:
        """Peak of the sampler program alone: the policy's parameters, its compute copy and the KV cache."""
        return self.dora_params + self.sampling

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
    """The model the trainer would build (`trainer.loop.model_config_of`; a vocabulary of 0 is the task
    tokenizer's, as the pipeline fills it in)."""
    if not config.ref_dir and not config.model.vocab_size:
        model_config = ModelConfig(**config.model)
        return model_config.replace(vocab_size=tasks.make_task(config.task).vocab_size)
    return trainer_model_config(config)


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
    model_config, rules, B, T, P_len = _shapes(config, prompt_len)

    boxed = boxed_shapes(model_config)
    tx = make_optimizer(config.optim, config.trainer.num_steps)
    state = jax.eval_shape(lambda p: init_state(p, tx), boxed)
    layout = sharding.Layout.of(abstract_mesh, rules)
    spread = layout.spread_rules()  # the optimizer state and the accumulated gradients (see UpdateLayout)
    dora = _tree_bytes(state.params, abstract_mesh, rules)
    optimizer = _tree_bytes(state.opt_state, abstract_mesh, spread)

    M = config.optim.grad_accum
    if B % M:
        raise ValueError(f"rollout.prompts_per_step * objective.group_size = {B} rows do not split into "
                         f"optim.grad_accum = {M} equal micro-batches; make the rows a multiple of grad_accum.")
    process_mode = config.rollout.mode == "process"
    kv_mesh = AbstractMesh((1, 1, 1), sharding.MESH_AXES) if process_mode else abstract_mesh
    kv_cache = 2 * _array_bytes(kv_mesh, rules, ("layers", "batch", "length", "kv_heads", "head_dim"),
                                (model_config.num_layers, B, T, model_config.num_kv_heads, model_config.head_dim),
                                model_config.dtype)
    # Decoding reads a copy of the policy in the compute dtype, gathered over the row axes. The CPU compiler
    # runs bf16 matmuls in f32 and hoists the widened weights out of the decode loop: about 60% of an f32
    # copy on top (measured with benchmarks/memory.py at 0.5B-7B: 53-68%; an accelerator keeps bf16).
    weight_rules = layout.weight_rules()
    compute_copy = (_tree_bytes(boxed, kv_mesh, weight_rules, model_config.dtype)
                    + int(0.6 * _tree_bytes(boxed, kv_mesh, weight_rules)))
    return MemoryPlan(
        model=model_config, mesh=sizes, num_params=model_config.num_params(), rows=B, grad_accum=M,
        micro_shards=B // M // _shard_shape(abstract_mesh, rules, ("batch",), (B // M,))[0], prompt_len=P_len,
        seq_len=T, process_mode=process_mode,
        ref_params=_tree_bytes(boxed, abstract_mesh, rules, _frozen_dtype(config.ref_dir, config)),
        # Without a nora_dir the trainer holds Ref's arrays as Nora: the same buffers, counted once.
        nora_params=_tree_bytes(boxed, abstract_mesh, rules, _frozen_dtype(config.nora_dir, config))
        if config.nora_dir else 0,
        dora_params=dora, optimizer=optimizer, gradients=2 * _tree_bytes(state.params, abstract_mesh, spread),
        kv_cache=kv_cache,
        sampler_params=compute_copy + (_tree_bytes(boxed, kv_mesh, rules) if process_mode else 0),
        activations=sum(activation_bytes(model_config, boxed, abstract_mesh, rules, B // M, T,
                                         scored_trees(config.objective), config.rollout.max_new_tokens).values()))


def activation_bytes(model_config: ModelConfig, boxed: Any, mesh: AbstractMesh, rules: sharding.Rules, rows: int,
                     seq_len: int, scored: Sequence[str], response_len: int | None = None) -> dict[str, int]:
    """The update step's activation estimate per device, by part (see the module docstring).

    `rows` is the micro-batch, `scored` the trees the update scores ("policy" first); the head runs on the
    last `response_len` positions (all when None).
    """
    c = model_config
    b, T = rows, seq_len
    layout = sharding.Layout.of(mesh, rules)

    def act(logical, shape, dtype=c.dtype, on=layout):
        return _array_bytes(mesh, on.activation_rules(), logical, shape, dtype)

    # Rows split over the batch axes, heads / MLP over `tensor`; `embed` stays whole.
    x = act(("batch", None, None), (b, T, c.hidden_size))
    x_f32 = act(("batch", None, None), (b, T, c.hidden_size), "float32")
    mlp_f32 = act(("batch", None, "mlp"), (b, T, c.intermediate_size), "float32")
    block = min(c.attention_chunk, T)  # attention runs in blocks of queries (decoder.attend)
    scores_f32 = act(("batch", "heads", None, None), (b, c.num_heads, block, T), "float32")
    layer_weights = _tree_bytes(boxed["layers"], mesh, layout.weight_rules(), "float32") // c.num_layers
    if c.remat:
        # The residual stream at each layer boundary, in the compute dtype plus a float32 copy the CPU compiler
        # keeps; then one layer recomputed and differentiated at a time.
        residuals = c.num_layers * (x + (x_f32 if x != x_f32 else 0))
        layer = 3 * mlp_f32 + 3 * scores_f32
    else:
        per_layer = 3 * mlp_f32 + scores_f32 + 8 * x_f32
        residuals, layer = c.num_layers * per_layer, 2 * mlp_f32 + scores_f32
    # The head runs vocabulary-parallel (sharding.vocab_parallel): a scoring chunk's rows whole, the
    # vocabulary split over every device; logits and log-softmax of the trees scored together, and cotangents.
    vocab = sharding.Layout.of(mesh, rules)._replace(vocab_rows=True)
    head_T = T if response_len is None else min(T, response_len + 1)
    logits = 5 * act(("batch", None, "vocab"), (rows, scoring.default_chunk(head_T), c.vocab_size), "float32", vocab)
    return {
        "residuals": residuals,
        "layer": layer,
        "hidden": 2 * len(scored) * x,
        "logits": logits,
        "gathered_weights": 3 * layer_weights,  # one layer's weights gathered across the row axes, cast, and gradient
    }


# ---------------------------------------------------------------------------------------------------- compiled
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Compiled:
    """Per-device bytes of one compiled program (`compiled.memory_analysis()`), and its collectives."""

    argument: int
    output: int
    alias: int  # output bytes that reuse donated arguments
    temp: int
    collectives: dict[str, int]  # kind -> count in the optimized HLO
    largest_all_reduces: list[tuple[str, int]]  # (result shape, bytes per device), largest first
    kv_cache: int | None = None  # sampler: bytes of the full-length caches as laid out in the program (None: not
    #                              found with rows split over the devices, or not a sampler)

    @property
    def peak(self) -> int:
        """Arguments, outputs not aliasing them, and temporaries: what the device holds while it runs."""
        return self.argument + self.output - self.alias + self.temp


def compile_update(config, mesh: jax.sharding.Mesh, prompt_len: int | None = None) -> Compiled:
    """Compiles (never runs) the trainer's update for `config` on `mesh`, exactly as `Trainer` jits it, for
    abstract inputs of the config's shapes; only the model's config.json is read."""
    model_config, rules, B, T, P_len = _shapes(config, prompt_len)
    tx, update = update_of(config, model_config)
    laid = UpdateLayout.of(model_config, tx, mesh, rules)
    params = param_shapes(model_config)
    state = _abstract(jax.eval_shape(lambda p: init_state(p, tx), params), laid.state)
    frozen = {name: _abstract(params, laid.params, _frozen_dtype(path, config))
              for name, path in (("ref", config.ref_dir), ("nora", config.nora_dir or config.ref_dir))}
    dtypes = {"tokens_BxT": jnp.int32, "mask_BxT": jnp.int32, "clusters_B": jnp.int32}
    batch = RolloutBatch(*(jax.ShapeDtypeStruct((B, T) if k.endswith("BxT") else (B,), dtypes.get(k, jnp.float32),
                                                sharding=s) for k, s in zip(RolloutBatch._fields, laid.batch)))
    measured = _measure(laid.jit(update, tuple(frozen)).lower(state, frozen, batch).compile())
    if config.nora_dir:
        return measured
    # Without a nora_dir the trainer passes Ref's arrays as Nora too: one set of buffers, held once.
    shared = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(frozen["nora"]))
    return dataclasses.replace(measured, argument=measured.argument - shared)


def compile_sampler(config, mesh: jax.sharding.Mesh, prompt_len: int | None = None) -> Compiled:
    """Compiles (never runs) the inline sampler's program for one batch of `config` (B rows, P + N slots),
    the policy laid out as the trainer holds it on `mesh`."""
    model_config, rules, B, T, P_len = _shapes(config, prompt_len)
    layout = sharding.Layout.of(mesh, rules)
    policy = _abstract(param_shapes(model_config),
                       sharding.tree_shardings(boxed_shapes(model_config), mesh, layout.rules))
    rows = sampler.row_sharding(layout, B)
    prompt = jax.ShapeDtypeStruct((B, P_len), jnp.int32, sharding=rows)
    keys = jax.ShapeDtypeStruct((B,), jax.random.key(0).dtype, sharding=rows)
    r = config.rollout
    lowered = sampler.lower(model_config, (policy,), prompt, prompt, keys, layout=layout,
                            max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            stop_ids=(1,), pad_id=0)
    compiled = lowered.compile()
    # The full-length caches as the program holds them: per layer k and v of [rows, P + N, kv_heads, head_dim],
    # found by their per-device shape in the optimized HLO, rows split as the rules say and never whole.
    c = model_config
    spec = sharding.resolve_spec(P(*CACHE_AXES[1:]), (B, T, c.num_kv_heads, c.head_dim), mesh, layout.rules)
    shard = NamedSharding(mesh, spec).shard_shape((B, T, c.num_kv_heads, c.head_dim))
    hlo = compiled.as_text()
    dtype = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}[jnp.dtype(c.dtype).name]
    sharded = f"{dtype}[{','.join(map(str, shard))}]" in hlo
    whole = shard[0] != B and f"{dtype}[{B},{T},"in hlo
    kv_cache = 2 * c.num_layers * math.prod(shard) * jnp.dtype(c.dtype).itemsize if sharded and not whole else None
    return dataclasses.replace(_measure(compiled), kv_cache=kv_cache)


def _shapes(config, prompt_len):
    """(model config, rules, rows B, sequence length T, prompt length) of `config`, as the trainer sizes them."""
    model_config = model_config_of(config)
    rules = tuple(tuple(r) for r in config.mesh.rules)
    P_len = prompt_len or tasks.task_class(config.task.name).prompt_budget(tasks.parse_config(config.task))
    B = config.rollout.prompts_per_step * config.objective.group_size
    return model_config, rules, B, P_len + config.rollout.max_new_tokens, P_len


def _abstract(shapes: Any, shardings: Any, dtype=None) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=s), shapes, shardings)


def _measure(compiled) -> Compiled:
    m = compiled.memory_analysis()
    hlo = compiled.as_text()
    counts = {kind: len(re.findall(rf" {kind}(?:-start)?\(", hlo)) for kind in COLLECTIVES}
    reduces = []
    for shape in re.findall(r"= (\S+) all-reduce(?:-start)?\(", hlo):
        dims = re.findall(r"(\w+)\[([\d,]*)\]", shape)
        nbytes = sum(math.prod(int(d) for d in ds.split(",") if d) * _HLO_BYTES.get(t, 4) for t, ds in dims)
        reduces.append((shape, nbytes))
    return Compiled(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes, alias=m.alias_size_in_bytes,
                    temp=m.temp_size_in_bytes, collectives=counts,
                    largest_all_reduces=sorted(reduces, key=lambda r: -r[1])[:5])


_HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8,
              "s64": 8, "u64": 8}


def format_plan(figures: MemoryPlan, device_bytes: int | None = None) -> str:
    """A table of GiB per device per item, the peak, and the headroom on a device of `device_bytes`."""
    c, mesh = figures.model, figures.mesh
    pdt, cdt = jnp.dtype(c.param_dtype).name, jnp.dtype(c.dtype).name
    rows = [
        ("ref params", figures.ref_params, f"{figures.num_params:,} params"),
        ("Nora params", figures.nora_params, "frozen" if figures.nora_params else "Ref's arrays (no nora_dir)"),
        ("Dora params", figures.dora_params, f"{pdt} master copy"),
        ("optimizer state", figures.optimizer, "Adam mu + nu"),
        ("gradients", figures.gradients, f"{1 if figures.grad_accum == 1 else 2} x params  [update]"),
        ("update activations", figures.activations,
         f"{figures.rows // figures.grad_accum} rows x {figures.seq_len} tokens, remat {'on' if c.remat else 'off'}  "
         "[update]"),
        ("sampler KV cache", figures.kv_cache, f"{figures.rows} rows x {figures.seq_len} slots, {cdt}  [sampling]"),
    ]
    rows.append(("sampler weights", figures.sampler_params,
                 ("process mode: an unsharded copy on its device, " if figures.process_mode else "")
                 + f"{cdt} copy gathered for decoding  [sampling]"))
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
             "sampler weights": figures.sampler_params}
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
