"""Shared defaults for every dora_jax config; variants override fields, never copy this file.

Each field has a one-line comment with its meaning and units. Configs return an
`ml_collections.ConfigDict`; the launcher locks it so a typo in `--config.x=y` fails.
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds parameter init, data order and sampling

    # Model
    c.model = ml_collections.ConfigDict()
    c.model.vocab_size = 64  # tokens (embedded task's tokenizer size, or the HF config's)
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

    # Policies: where the three parameter trees come from ("" = random init, for tests).
    c.ref_dir = ""  # HF dir or dora_jax checkpoint of the reference model pi_ref
    c.nora_dir = ""  # HF dir or dora_jax checkpoint of Nora, the exploitation policy (frozen)
    c.dora_init = "nora"  # Dora's initial parameters: "nora" (paper default) or "ref"

    # Objective
    c.objective = ml_collections.ConfigDict()
    c.objective.loss = "dora_indicator"  # registered loss (dora_jax.objectives.LOSSES)
    c.objective.advantage = "grpo"  # registered advantage transform (dora_jax.objectives.ADVANTAGES)
    c.objective.group_size = 8  # responses per prompt G
    c.objective.agg = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    c.objective.eps_low = 0.2  # PPO clip 1 - eps_low
    c.objective.eps_high = 0.2  # PPO clip 1 + eps_high (raise for clip-higher)
    c.objective.beta_kl = 0.0  # weight of the k3 KL to the reference
    c.objective.entropy_coef = 0.0  # entropy bonus weight
    c.objective.beta = 1.0  # psi temperature: psi = exp(A / beta)
    c.objective.delta = 2.0  # clip range of the Dora weight C(x, delta)
    c.objective.tau = 1.0  # advantage scale inside the ref_weighted psi
    c.objective.psi_form = "exp_adv"  # exp_adv (paper) | ref_weighted (released code)
    c.objective.credit = "token"  # dora_clipped credit: token (immediate) | return (reverse cumulative)
    c.objective.k = 4  # k of pass@k-style advantages
    c.objective.set_size = 4  # n of set advantages (poly_epo, pass_at_k)

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

    # Trainer
    c.trainer = ml_collections.ConfigDict()
    c.trainer.num_steps = 60  # updates
    c.trainer.checkpoint_every = 20  # updates between checkpoints (and at the end)
    c.trainer.keep_checkpoints = 2  # newest checkpoints kept on disk
    c.trainer.progress = True  # tqdm progress bar with ETA
    return c
