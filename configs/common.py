"""Shared defaults for every dora_jax config; variants override fields, never copy this file.

Each field has a one-line comment with its meaning and units. Configs return an
`ml_collections.ConfigDict`; the launcher locks it so a typo in `--config.x=y` fails.
"""

import ml_collections

from dora_jax import objectives
from dora_jax.tasks import diversity


def variants(arg) -> set[str]:
    """The comma-separated variant names of `--config=configs/x.py:VARIANT[,VARIANT]`."""
    return {v.strip() for v in (arg or "").split(",") if v.strip()}


def build_arg(arg) -> str:
    """The variants a config passes to the configs that build its ref / Nora (only `smoke`)."""
    return "smoke" if "smoke" in variants(arg) else ""


def get_config(arg=None):
    del arg  # variants are applied by finish(), after a config's own settings
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds parameter init, data order and sampling
    c.name = "dora"  # the policy this config trains: "ref" | "nora" | "dora" (labels reports and the cache)

    # Task: the embedded Countdown world (docs/design.md §7), generated from its seed, nothing downloaded.
    c.task = ml_collections.ConfigDict()
    c.task.name = "countdown"
    c.task.seed = 0  # problem generation and the disjoint SFT / RL / held-out split
    c.task.num_problems = 3000  # distinct problems before the 55/30/15 split
    c.task.sft_samples_per_problem = 8  # solutions per SFT problem, templates drawn by their corpus weights

    # Model
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

    # Policies: where the three parameter trees come from ("" = random init, for tests).
    c.ref_dir = ""  # HF dir or dora_jax checkpoint of the reference model pi_ref
    c.nora_dir = ""  # HF dir or dora_jax checkpoint of Nora, the exploitation policy (frozen)
    c.dora_dir = ""  # a trained Dora to distill into Nora (configs/distill.py; "" = none)
    c.dora_init = "nora"  # Dora's initial parameters: "nora" (paper default) or "ref"

    # Objective: the loss, the advantage and their hyperparameters (defaults in dora_jax.objectives).
    c.objective = objectives.default_config()

    # Diversity: strategy cluster ids for set advantages (dora_jax.tasks.diversity).
    c.diversity = diversity.default_config()

    # Optimizer
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-5  # peak learning rate
    c.optim.warmup_steps = 0  # linear warmup steps
    c.optim.schedule = "constant"  # constant | cosine (decays to 10% over trainer.num_steps)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.99  # Adam beta2
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
    c.optim.grad_clip = 1.0  # global-norm clip (0 = off)
    c.optim.grad_accum = 1  # micro-batches per update (exact: loss denominators are global)

    # Mesh: axis sizes (-1 = all remaining devices) and logical-axis -> mesh-axis rules.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("vocab", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
    )

    # Rollout
    c.rollout = ml_collections.ConfigDict()
    c.rollout.temperature = 1.0  # sampling temperature; the scorer divides logits by the same value
    c.rollout.top_p = 1.0  # nucleus sampling mass (1 = off; log-probs stay those of the full distribution)
    c.rollout.top_k = 0  # keep the k most likely tokens (0 = off)
    c.rollout.max_new_tokens = 10  # response budget in tokens (the longest Countdown answer is 8 + <eos>)
    c.rollout.prompts_per_step = 64  # prompts per update; the batch is prompts_per_step x group_size sequences
    c.rollout.mode = "inline"  # inline: sample in the learner (Colab) | process: a separate sampler process
    c.rollout.sync_every = 1  # process mode: updates between parameter pushes to the sampler
    c.rollout.max_staleness = 0  # process mode: drop batches sampled more than this many updates ago (0 = on-policy)
    c.rollout.queue_size = 2  # process mode: batches the sampler may run ahead
    c.rollout.samples_every = 10  # updates between sampled-text dumps to samples.jsonl (one group each)
    c.rollout.handover_window = 0  # tokens per Dora / Nora window in handover sampling (paper §5.2; 0 = off)

    # Evaluation on held-out problems
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 10  # updates between quick evaluations (eval/* metrics; 0 = only at the end)
    c.eval.quick_problems = 128  # held-out problems in a quick evaluation (4 samples each at the rollout temperature)
    c.eval.samples = 16  # samples per held-out problem in the final evaluation (pass@k for k <= samples)
    c.eval.max_problems = 0  # cap on held-out problems in the final evaluation (0 = all)

    # Pipeline: on the embedded task, missing ref / Nora checkpoints are built by these configs and cached.
    c.cache_dir = "~/.cache/dora_jax"  # where built ref / Nora checkpoints are kept, keyed by their config
    c.build = ml_collections.ConfigDict()  # .ref / .nora: configs that build a missing ref_dir / nora_dir
    c.sweep = ""  # "objective.beta=0.01,0.1,1": one run per value under workdir/<field>=<value>, then overlays

    # Trainer
    c.trainer = ml_collections.ConfigDict()
    c.trainer.num_steps = 60  # updates
    c.trainer.checkpoint_every = 20  # updates between checkpoints (and at the end)
    c.trainer.keep_checkpoints = 2  # newest checkpoints kept on disk
    c.trainer.progress = True  # tqdm progress bar with ETA
    c.trainer.stop_kl = 0.0  # stop once KL(Dora || Nora) per token exceeds this many nats (0 = never)

    # SFT (configs/ref_sft.py): batches of corpus examples instead of rollouts.
    c.sft = ml_collections.ConfigDict()
    c.sft.batch_size = 256  # sequences per update

    # Distillation (configs/distill.py): Nora fine-tuned on Dora's correct samples when dora_dir is set.
    c.distill = ml_collections.ConfigDict()
    c.distill.samples_per_problem = 8  # Dora's samples per training problem
    c.distill.rare_only = True  # keep only strategies Nora rarely uses on that problem
    c.distill.rare_share = 0.25  # "rarely": in fewer than this share of Nora's own samples on the problem
    c.distill.nora_replay = False  # also keep Nora's own correct samples (rehearsal of what she solves)

    # Distributed: devices the inline sampler owns (dora_jax.sharding.split_devices).
    c.rollout.sampler_devices = 0  # devices set aside for sampling, in total over processes (0 = share the learner's)
    c.rollout.sampler_tensor = 1  # tensor-parallel width of the sampler's mesh; its other devices split the rows

    return c


def finish(c: ml_collections.ConfigDict, arg=None) -> ml_collections.ConfigDict:
    """Applies the variants every config shares; call last in a config's get_config.

    `math`: real math from local files and models (real_math). `smoke`: tiny and fast, for tests. `seeds`: three independent pipelines (seed 0, 1, 2,
    ref and Nora rebuilt per seed) with a mean ± std table in WORKDIR/sweep.md.
    """
    if "math" in variants(arg):
        real_math(c)
    if "smoke" in variants(arg):
        smoke(c)
        if "math" in variants(arg):
            tiny_math(c)
    if "seeds" in variants(arg):
        c.sweep = "seed=0,1,2"
    return c


def real_math(c: ml_collections.ConfigDict) -> None:
    """The `:math` variant (docs/design.md §7): DeepScaleR-format training file, AIME-format eval file, a local HF model.

    Set the paths: --config.ref_dir=R1_DISTILL_DIR --config.nora_dir=NORA_DIR
    --config.task.train_data=deepscaler.jsonl --config.task.eval_data=aime2025.jsonl.
    """
    t = c.task = ml_collections.ConfigDict()
    t.name = "math"
    t.source = "files"  # files: local .json / .jsonl / .parquet | tfds: splits of a TFDS dataset built from a manual dir
    t.train_data = "data/deepscaler.jsonl"  # comma-separated training files (tfds: a split name)
    t.eval_data = "data/aime2025.jsonl"  # held-out file (tfds: a split name); launch/eval.py takes any
    t.problem_field = "problem"  # column holding the problem text
    t.answer_field = "answer"  # column holding the gold answer (text or number)
    t.tfds_manual_dir = ""  # tfds: dir with SPLIT.jsonl / .json / .parquet files
    t.tfds_data_dir = "~/tensorflow_datasets"  # tfds: where the prepared ArrayRecord dataset is written
    t.tokenizer_dir = ""  # local HF dir with the tokenizer and chat template ("" = ref_dir)
    t.chat_template = True  # wrap the problem as the chat template's user turn (False: plain text)
    t.prompt_suffix = " Let's think step by step and output the final answer within \\boxed{}."
    t.max_prompt_len = 1_024  # tokens; longer problems are dropped with a count
    t.pad_multiple = 64  # prompt widths round up to this, so batches share a few compiled shapes
    t.bucket_window = 8  # batches per length-sorting window (1 = no bucketing)
    t.require_think_close = False  # DeepScaleR: a response without </think> scores 0 and is unformatted
    t.allow_fallback = True  # grade "final answer is X" / "answer: X" when there is no \\boxed{}
    t.grade_timeout_s = 2.0  # hard limit per sympy comparison (the worker process is killed past it)

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
    c.sft.batch_size = 64
    c.trainer.checkpoint_every = 4
    c.trainer.progress = False
