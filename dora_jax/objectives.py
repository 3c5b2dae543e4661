"""Objectives: loss aggregation, the GRPO and Dora losses, and advantage transforms (docs/design.md §3).

Everything is a pure, jit-able function of float32 arrays, selected by name from a registry:

    loss, metrics = get_loss("dora_indicator")(logp_BxT, batch, hp, denoms_of(mask_BxT))
    adv_PxG = get_advantage("poly_epo")(rewards_PxG, clusters_PxG, hp)

A notebook adds an objective with one decorated function:

    @register_loss("my_loss")
    def my_loss(logp_BxT, batch, hp, denoms): ...

The `objective` config section is `ObjectiveConfig` here, defaults and checks once; losses read
`hp.<field>` directly. A loss declares which frozen trees it reads (`uses`, a tuple or a function of
the config section: the trainer scores just those, and reading another raises) and which fields
beyond the common ones (`reads`: a config for it carries just those). A registered loss receives
float32 log-probs and its batch as float32 constants (stop-gradient, except the entropy).

Losses divide by *global* denominators (`Denoms` of the whole batch), so summing the losses,
gradients and metrics of micro-batches reproduces the full-batch values exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dora_jax import sections
from dora_jax.sections import require

# psi = exp(.) caps its exponent here so float32 never overflows (exp overflows at ~88.7):
# e^60 ~ 1e26 already saturates every clip(psi * x, -delta, delta) with |x| > 1e-25, and a
# sum of e^60 over 1e12 tokens (the psi_mean metric) is still finite, so the trainer's
# NaN/Inf guard never trips on tiny beta (the paper's beta = 0.01 gives A / beta ~ 250).
_MAX_LOG_PSI = 60.0
# Bound on log rho (docs/design.md §3): a stale token can never produce an inf ratio.
_MAX_LOG_RATIO = 20.0

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
PSI_FORMS = ("exp_adv", "ref_weighted", "signed")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The `objective` config section: the registered loss and advantage and their hyperparameters.

    A config's section holds the common fields and those its loss and advantage declare
    (`default_config(loss, advantage)`); a field it leaves out keeps the default here.
    """

    loss: str = "dora_indicator"  # registered loss (LOSSES)
    advantage: str = "grpo"  # registered advantage transform (ADVANTAGES)
    group_size: int = 8  # responses per prompt G
    agg: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    log_kl_nora: bool = False  # score Nora for kl/policy_nora_* even when the loss does not read her
    # Policy-gradient losses
    eps_low: float = 0.2  # PPO clip 1 - eps_low
    eps_high: float = 0.2  # PPO clip 1 + eps_high (raise for clip-higher)
    beta_kl: float = 0.0  # weight of the k3 KL to the reference (ref is scored only when > 0 or the loss reads it)
    entropy_coef: float = 0.0  # entropy bonus weight
    # Dora losses
    beta: float = 1.0  # psi temperature: psi = exp(A / beta)
    delta: float = 2.0  # clip range of the Dora weight C(x, delta)
    tau: float = 1.0  # advantage scale inside the ref_weighted psi
    psi_form: str = "exp_adv"  # exp_adv (paper) | ref_weighted (released code) | signed (exp_adv - 1: wrong pushed down)
    credit: str = "token"  # dora_clipped credit: token (immediate) | return (reverse cumulative)
    # Advantages
    k: int = 4  # k of the analytic pass@k advantage
    set_size: int = 4  # n of set advantages (poly_epo, pass_at_k)
    diversity_bonus: float = 0.5  # lambda of the grpo_diversity advantage (novel correct strategies)
    nora_push: float = 0.0  # dora_complement: advantage taken from responses inside Nora's modes (D <= 0)
    nora_samples: int = 0  # complementarity reward: Nora's samples per prompt; reward x (1 - her success) (0 = off)
    # what is taken off: "problem" her success on it | "strategy" her correct share in the response's cluster |
    # "modes" her batch-wide share of correct samples in the response's labelled strategy
    nora_reward_by: str = "problem"
    nora_reward_weight: float = 1.0  # lambda: reward x (1 - lambda x her success); 1 takes all of it off
    spare_rare: bool = False  # responses in the task's rare strategies keep their whole reward (labelled tasks)
    # Guided groups: up to `guide` rows of each group become correct samples of the prompt drawn by `guide_from`:
    # "nora" (from her objective.nora_samples draws) or "ref" (group_size draws of Ref's); 0 = off
    guide: int = 0
    guide_from: str = "nora"

    def __post_init__(self):
        require(self.loss in LOSSES, "loss", self.loss, f"use a registered loss: {', '.join(sorted(LOSSES))}.")
        require(self.advantage in ADVANTAGES, "advantage", self.advantage,
                f"use a registered advantage: {', '.join(sorted(ADVANTAGES))}.")
        require(self.group_size >= 1, "group_size", self.group_size, "use at least 1 response per prompt.")
        require(self.agg in AGG_MODES, "agg", self.agg, f"use one of {', '.join(AGG_MODES)}.")
        require(self.psi_form in PSI_FORMS, "psi_form", self.psi_form, f"use one of {', '.join(PSI_FORMS)}.")
        require(self.credit in ("token", "return"), "credit", self.credit, "use 'token' or 'return'.")
        require(self.beta > 0, "beta", self.beta, "the psi temperature must be positive (the paper uses 0.01 to 1).")
        require(self.delta > 0, "delta", self.delta, "the clip range must be positive (the paper uses 2).")
        require(0 <= self.eps_low < 1 and self.eps_high >= 0, "eps_low", (self.eps_low, self.eps_high),
                "PPO clip widths must satisfy 0 <= eps_low < 1 and eps_high >= 0.")
        require(self.beta_kl >= 0, "beta_kl", self.beta_kl, "the KL weight cannot be negative.")
        require(self.nora_samples >= 0, "nora_samples", self.nora_samples, "use 0 (off) or Nora's samples per prompt.")
        require(self.nora_reward_by in ("problem", "strategy", "modes"), "nora_reward_by", self.nora_reward_by,
                "use 'problem' (her success rate on it), 'strategy' (her correct share in the response's cluster) "
                "or 'modes' (her batch-wide correct share in the response's strategy).")
        require(0 <= self.nora_reward_weight <= 1, "nora_reward_weight", self.nora_reward_weight,
                "use a weight in [0, 1]: 0 leaves the rewards as they are, 1 takes all of Nora's success off.")
        require(not self.spare_rare or (self.nora_samples > 0 and self.nora_reward_weight > 0), "spare_rare",
                self.spare_rare, "sparing rare strategies changes the complementarity reward: set "
                "objective.nora_samples > 0 and nora_reward_weight > 0.")
        require(0 <= self.guide < self.group_size, "guide", self.guide,
                f"use 0 (off) or fewer rows than the group holds ({self.group_size}).")
        require(self.guide_from in ("nora", "ref"), "guide_from", self.guide_from,
                "use 'nora' (her correct samples) or 'ref' (Ref's).")
        require(not self.guide or self.guide_from != "nora" or self.nora_samples >= self.guide, "guide",
                self.guide, "Nora-guided groups take her correct samples from objective.nora_samples: set "
                "nora_samples >= guide (and nora_reward_weight = 0 to leave the rewards unshaped).")
        if "set_size" in ADVANTAGES[self.advantage].reads:
            require(1 <= self.set_size <= self.group_size, "set_size", self.set_size,
                    f"set advantages need 1 <= set_size <= group_size ({self.group_size}).")
        if "k" in ADVANTAGES[self.advantage].reads:
            require(1 <= self.k <= self.group_size, "k", self.k, f"use 1 <= k <= group_size ({self.group_size}).")


COMMON_FIELDS = ("loss", "advantage", "group_size", "agg", "log_kl_nora")


def default_config(loss: str = "dora_indicator", advantage: str = "grpo") -> ml_collections.ConfigDict:
    """The `objective` section a config starts from: the common fields and those `loss` and `advantage` read."""
    names = COMMON_FIELDS + get_loss(loss).reads + get_advantage(advantage).reads
    full = dataclasses.asdict(ObjectiveConfig(loss=loss, advantage=advantage))
    return ml_collections.ConfigDict({name: full[name] for name in dict.fromkeys(names)})


def parse_config(section) -> ObjectiveConfig:
    """The typed, checked objective section (fields the section leaves out keep their defaults)."""
    return sections.parse(ObjectiveConfig, section, "objective")


# ----------------------------------------------------------------------------- registries


def _registry(kind: str, prepare: Callable[[Callable], Callable] = lambda fn: fn):
    table: dict[str, Callable] = {}

    def register(name: str, uses: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ("ref", "nora"),
                 reads: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
        """Decorator adding a function under `name` (re-registering replaces it, so notebook cells re-run).

        `uses` names the frozen trees whose log-probs the function reads (losses only), or maps the
        objective config to them: the trainer scores those alone, e.g. `register_loss("sft", uses=())`.
        `reads` names the ObjectiveConfig fields it reads beyond the common ones: a config for it
        carries just those (`default_config`).
        """

        def add(fn: Callable) -> Callable:
            fn = prepare(fn)
            fn.uses = uses if callable(uses) else tuple(uses)
            fn.reads = tuple(reads)
            table[name] = fn
            return fn

        return add

    def get(name: str) -> Callable:
        """The registered function called `name`; a ValueError lists the registered names otherwise."""
        if name not in table:
            raise ValueError(f"Unknown {kind} {name!r}. Registered {kind}es: {', '.join(sorted(table))}. "
                             f"Fix the config value, or register a new one with @register_{kind}({name!r}).")
        return table[name]

    return table, register, get


def _loss_inputs(fn: Callable) -> Callable:
    """A loss receives float32 log-probs, its batch as float32 constants (`_constants`) and the typed config."""

    @functools.wraps(fn)
    def loss(logp_BxT, batch, hp, denoms):
        return fn(jnp.asarray(logp_BxT, jnp.float32), _constants(batch), parse_config(hp), denoms)

    return loss


def _typed_config(fn: Callable) -> Callable:
    """An advantage receives the typed config (a section that leaves a field out gets its default)."""

    @functools.wraps(fn)
    def advantage(rewards_PxG, clusters_PxG, hp):
        return fn(rewards_PxG, clusters_PxG, parse_config(hp))

    return advantage


LOSSES, register_loss, get_loss = _registry("loss", _loss_inputs)
ADVANTAGES, register_advantage, get_advantage = _registry("advantage", _typed_config)


def trees_read(hp: Any) -> tuple[str, ...]:
    """The frozen trees ("ref", "nora") whose log-probs the configured loss reads."""
    uses = get_loss(hp.loss).uses
    return tuple(uses(hp)) if callable(uses) else uses


class LossBatch(dict):
    """A loss's inputs; asking for a frozen tree's log-probs the loss did not declare is an error, not a zero."""

    def __missing__(self, key):
        raise KeyError(f"{key!r} is not in the loss batch: the loss reads a frozen tree it did not declare. "
                       "Declare it with @register_loss(name, uses=(\"ref\", \"nora\")) (or a function of the config).")


# ----------------------------------------------------------------------------- aggregation


class Denoms(NamedTuple):
    """Global loss denominators of a whole batch (all micro-batches), float32 scalars."""

    tokens: jax.Array  # masked-in response tokens, at least 1
    seqs: jax.Array  # sequences, at least 1
    max_len: jax.Array  # response length budget N (Dr.GRPO's constant normaliser)


def denoms_of(mask_BxT: jax.Array, response_budget: int | None = None) -> Denoms:
    """Denominators of one full batch; max(., 1) makes an all-zero mask aggregate to 0, not NaN.

    `response_budget`: the most response tokens a sequence may have (rollout.max_new_tokens). It must
    not be the mask's width, which also counts the left-padded prompt columns and so would change the
    Dr.GRPO loss of the same responses with the batch's longest prompt. None: the width (masks that
    hold responses only, as in the tests).
    """
    mask_BxT = jnp.asarray(mask_BxT, jnp.float32)
    B, T = mask_BxT.shape
    budget = T if response_budget is None else response_budget
    return Denoms(tokens=jnp.maximum(jnp.sum(mask_BxT), 1.0), seqs=jnp.float32(max(B, 1)), max_len=jnp.float32(budget))


def agg(x_BxT: jax.Array, mask_BxT: jax.Array, mode: str, denoms: Denoms) -> jax.Array:
    """Aggregates masked per-token values to a scalar (docs/design.md §2).

    token-mean:              sum_{i,t} m x / tokens
    seq-mean-token-mean:     sum_i [sum_t m x / max(sum_t m, 1)] / seqs
    seq-mean-token-sum-norm: sum_i [sum_t m x / max_len] / seqs            (Dr.GRPO)
    Each is a sum over sequences divided by global constants, hence additive over micro-batches.
    """
    x_BxT = jnp.asarray(x_BxT, jnp.float32)
    mask_BxT = jnp.asarray(mask_BxT, jnp.float32)
    masked_BxT = x_BxT * mask_BxT
    if mode == "token-mean":
        return jnp.sum(masked_BxT) / denoms.tokens
    if mode == "seq-mean-token-mean":
        seq_mean_B = jnp.sum(masked_BxT, axis=1) / jnp.maximum(jnp.sum(mask_BxT, axis=1), 1.0)
        return jnp.sum(seq_mean_B) / denoms.seqs
    if mode == "seq-mean-token-sum-norm":
        return jnp.sum(masked_BxT) / denoms.max_len / denoms.seqs
    raise ValueError(f"Unknown loss aggregation {mode!r}; set objective.agg to one of {', '.join(AGG_MODES)}.")


def _token_mean(x_BxT: jax.Array, mask_BxT: jax.Array, denoms: Denoms) -> jax.Array:
    # Metrics are token-means over the global token count, so micro-batch metrics sum exactly.
    return agg(x_BxT, mask_BxT, "token-mean", denoms)


# ----------------------------------------------------------------------------- shared pieces


def _constants(batch: dict[str, jax.Array]) -> LossBatch:
    """The batch in float32 and stop-gradiented, except "entropy_BxT"."""
    batch = {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}
    # The entropy bonus only acts through a differentiable entropy, so the entropy keeps whatever
    # gradient path the caller gives it (a stop-gradiented entropy just makes the bonus a constant).
    return LossBatch({k: v if k == "entropy_BxT" else jax.lax.stop_gradient(v) for k, v in batch.items()})


def _per_token(adv: jax.Array, like_BxT: jax.Array) -> jax.Array:
    """A per-sequence advantage [B] (or already per-token [B, T]) broadcast to [B, T]."""
    adv = jnp.asarray(adv, jnp.float32)
    return jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, like_BxT.shape)


def _ratio(logp_BxT: jax.Array, logp_old_BxT: jax.Array) -> jax.Array:
    """rho_t = exp(clip(lD_t - lOld_t, -20, 20)) (docs/design.md §3)."""
    return jnp.exp(jnp.clip(logp_BxT - logp_old_BxT, -_MAX_LOG_RATIO, _MAX_LOG_RATIO))


def _clip_ratio(rho_BxT: jax.Array, hp: Any) -> jax.Array:
    return jnp.clip(rho_BxT, 1.0 - hp.eps_low, 1.0 + hp.eps_high)


def _ppo_surrogate(rho_BxT: jax.Array, c_BxT: jax.Array, hp: Any) -> jax.Array:
    """min(rho c, clip(rho, 1 - eps_low, 1 + eps_high) c): the pessimistic PPO bound on rho c."""
    return jnp.minimum(rho_BxT * c_BxT, _clip_ratio(rho_BxT, hp) * c_BxT)


def _k3(logp_BxT: jax.Array, logp_ref_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """k3_t = exp(lR - lD) - (lR - lD) - 1, the unbiased non-negative KL(D || ref) estimator.

    Masked-out tokens (e.g. Nora's windows under handover, where lD can be very low) get
    lR - lD := 0 *before* the exp, so an overflow there cannot turn into NaN values or gradients.
    """
    d_BxT = jnp.where(mask_BxT > 0, logp_ref_BxT - logp_BxT, 0.0)
    return jnp.exp(d_BxT) - d_BxT - 1.0


def psi(adv_BxT_or_B: jax.Array, logp_ref_BxT: jax.Array, hp: Any) -> jax.Array:
    """The oracle advantage weight psi_t [B, T] (docs/design.md §3), of form hp.psi_form:

    exp_adv      (paper, Formulation 2): psi = exp(A / beta)
    ref_weighted (released code):        psi = exp(lR_t + tau A - log beta) = pi_ref e^{tau A} / beta
    signed:                              psi = exp(A / beta) - 1, negative for below-average samples (A < 0),
                                         so a wrong sample's Ref-favoured tokens are pushed down, not up
    The exponent is capped at 60 so float32 never overflows (see _MAX_LOG_PSI).
    """
    form = hp.psi_form
    logp_ref_BxT = jnp.asarray(logp_ref_BxT, jnp.float32)
    adv_BxT = _per_token(adv_BxT_or_B, logp_ref_BxT)
    beta = hp.beta
    if form in ("exp_adv", "signed"):
        log_psi_BxT = adv_BxT / beta
    elif form == "ref_weighted":
        log_psi_BxT = logp_ref_BxT + hp.tau * adv_BxT - math.log(beta)
    else:
        raise ValueError(f"Unknown psi_form {form!r}; set objective.psi_form to one of {', '.join(PSI_FORMS)}.")
    psi_BxT = jnp.exp(jnp.minimum(log_psi_BxT, _MAX_LOG_PSI))
    return psi_BxT - 1.0 if form == "signed" else psi_BxT


def _finish(pg_loss: jax.Array, logp_BxT: jax.Array, b: LossBatch, hp: Any, denoms: Denoms,
            metrics: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """loss = pg_loss + beta_kl agg(k3) - entropy_coef agg(entropy), with the shared metrics.

    pg_loss and loss use the configured aggregation (they are the loss terms); every other
    metric is a token-mean. All use the global denominators, so they sum over micro-batches.
    The k3 term and its kl_ref metric need ref's log-probs: without them (a loss that reads no
    ref and beta_kl = 0) neither exists; beta_kl > 0 without them raises (LossBatch).
    """
    mask_BxT = b["mask_BxT"]
    mode = hp.agg
    loss = pg_loss
    metrics = {**metrics, "pg_loss": pg_loss}
    if hp.beta_kl or "logp_ref_BxT" in b:
        k3_BxT = _k3(logp_BxT, b["logp_ref_BxT"], mask_BxT)
        loss = loss + hp.beta_kl * agg(k3_BxT, mask_BxT, mode, denoms)
        metrics["kl_ref"] = _token_mean(k3_BxT, mask_BxT, denoms)
    if "entropy_BxT" in b:
        loss = loss - hp.entropy_coef * agg(b["entropy_BxT"], mask_BxT, mode, denoms)
        metrics["entropy"] = _token_mean(b["entropy_BxT"], mask_BxT, denoms)
    metrics["loss"] = loss
    return loss, metrics


def _by_outcome(name: str, x_BxT: jax.Array, adv_B: jax.Array, mask_BxT: jax.Array,
                denoms: Denoms) -> dict[str, jax.Array]:
    """`name`_above and `name`_below: x summed over the tokens of above- and below-average samples (A > 0, A < 0),
    over all tokens (so the two add up to the token-mean over A != 0): where a Dora weight pushes."""
    adv_BxT = _per_token(adv_B, x_BxT)
    return {f"{name}_above": _token_mean(x_BxT * (adv_BxT > 0), mask_BxT, denoms),
            f"{name}_below": _token_mean(x_BxT * (adv_BxT < 0), mask_BxT, denoms)}


# ----------------------------------------------------------------------------- losses


# The fields every policy-gradient loss reads: the PPO clip (of the ratio to the behaviour policy), the k3
# KL to the reference and the entropy bonus (_finish).
_PG = ("eps_low", "eps_high", "beta_kl", "entropy_coef")


@register_loss("sft", uses=())
def sft_loss(logp_BxT: jax.Array, b: LossBatch, hp: Any,
             denoms: Denoms) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Supervised fine-tuning (builds pi_ref; docs/design.md §3.2): loss = agg(-lD), the masked NLL."""
    mask_BxT = b["mask_BxT"]
    loss = agg(-logp_BxT, mask_BxT, hp.agg, denoms)
    return loss, {"nll": _token_mean(-logp_BxT, mask_BxT, denoms), "loss": loss}


# GRPO reads the reference only through its k3 term: ref is scored when beta_kl > 0.
@register_loss("grpo", uses=lambda hp: ("ref",) if hp.beta_kl > 0 else (), reads=_PG)
def grpo_loss(logp_BxT: jax.Array, b: LossBatch, hp: Any,
              denoms: Denoms) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO / PPO-clip (docs/design.md §3.2, trains Nora from ref):

    loss = -agg(min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)) + beta_kl agg(k3).
    At rho = 1 the gradient is -agg(A grad lD) + beta_kl agg(grad k3).
    """
    mask_BxT = b["mask_BxT"]
    adv_BxT = _per_token(b["adv_B"], logp_BxT)
    rho_BxT = _ratio(logp_BxT, b["logp_old_BxT"])
    unclipped_BxT = rho_BxT * adv_BxT
    clipped_BxT = _clip_ratio(rho_BxT, hp) * adv_BxT
    pg_loss = -agg(jnp.minimum(unclipped_BxT, clipped_BxT), mask_BxT, hp.agg, denoms)
    # The clipped branch is active where the min strictly prefers it (its gradient is then 0).
    clip_frac = _token_mean(clipped_BxT < unclipped_BxT, mask_BxT, denoms)
    return _finish(pg_loss, logp_BxT, b, hp, denoms, {"clip_frac": clip_frac})


@register_loss("dora_clipped", reads=_PG + ("beta", "delta", "tau", "psi_form", "credit"))
def dora_clipped_loss(logp_BxT: jax.Array, b: LossBatch, hp: Any,
                      denoms: Denoms) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dora, paper Formulation 1 (clipped log-ratio), as a score-function gradient (docs/design.md §3.2):

    c_t = sg(min(max(lR_t - lN_t, -delta), u_t)), u_t = lR_t + A / beta (the upper bound wins if u < -delta);
    credit="return" replaces c_t by sum_{t' >= t, masked in} c_t';
    loss = -agg(min(rho c, clip(rho, 1 - eps_low, 1 + eps_high) c)), so at rho = 1 the gradient is -agg(c grad lD).
    """
    mask_BxT = b["mask_BxT"]
    log_ratio_BxT = b["logp_ref_BxT"] - b["logp_nora_BxT"]
    upper_BxT = b["logp_ref_BxT"] + _per_token(b["adv_B"], logp_BxT) / hp.beta
    lower = -hp.delta
    lower_clipped_BxT = jnp.maximum(log_ratio_BxT, lower)
    c_BxT = jnp.minimum(lower_clipped_BxT, upper_BxT)
    # Disjoint: "high" wherever the upper bound sets c (also when u < -delta), "low" where -delta does.
    high_BxT = lower_clipped_BxT > upper_BxT
    low_BxT = (log_ratio_BxT < lower) & ~high_BxT
    credit = hp.credit
    if credit == "return":
        # Reverse cumulative sum over the sequence's own (masked-in) tokens only.
        c_BxT = jax.lax.cumsum(c_BxT * mask_BxT, axis=1, reverse=True)
    elif credit != "token":
        raise ValueError(f"Unknown credit {credit!r}; set objective.credit to 'token' or 'return'.")
    pg_loss = -agg(_ppo_surrogate(_ratio(logp_BxT, b["logp_old_BxT"]), c_BxT, hp), mask_BxT,
                   hp.agg, denoms)
    metrics = {
        "clip_frac_low": _token_mean(low_BxT, mask_BxT, denoms),
        "clip_frac_high": _token_mean(high_BxT, mask_BxT, denoms),
        "log_ratio_mean": _token_mean(log_ratio_BxT, mask_BxT, denoms),
        "psi_mean": _token_mean(psi(b["adv_B"], b["logp_ref_BxT"], hp), mask_BxT, denoms),
    }
    return _finish(pg_loss, logp_BxT, b, hp, denoms, metrics)


@register_loss("dora_indicator", reads=_PG + ("beta", "delta", "tau", "psi_form"))
def dora_indicator_loss(logp_BxT: jax.Array, b: LossBatch, hp: Any,
                        denoms: Denoms) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dora, paper Formulation 2 (the default), S = E[1(lR - lN > 0) lD C(psi (lR - lN), delta)] (docs/design.md §3.2):

    w_t = sg(1(lR_t - lN_t > 0) clip(psi_t (lR_t - lN_t), -delta, delta));
    loss = -agg(min(rho w, clip(rho, 1 - eps_low, 1 + eps_high) w)) (= w min(rho, clip(rho)) for w >= 0), so at
    rho = 1 the gradient is -agg(w grad lD).
    """
    mask_BxT = b["mask_BxT"]
    log_ratio_BxT = b["logp_ref_BxT"] - b["logp_nora_BxT"]
    psi_BxT = psi(b["adv_B"], b["logp_ref_BxT"], hp)
    gate_BxT = log_ratio_BxT > 0
    delta = hp.delta
    w_BxT = gate_BxT * jnp.clip(psi_BxT * log_ratio_BxT, -delta, delta)
    # = w min(rho, clip(rho)) for w >= 0; the pessimistic bound also for a signed psi's negative weights
    pg_loss = -agg(_ppo_surrogate(_ratio(logp_BxT, b["logp_old_BxT"]), w_BxT, hp), mask_BxT, hp.agg, denoms)
    metrics = {
        "indicator_frac": _token_mean(gate_BxT, mask_BxT, denoms),
        "weight_mean": _token_mean(w_BxT, mask_BxT, denoms),
        "psi_mean": _token_mean(psi_BxT, mask_BxT, denoms),
        "log_ratio_mean": _token_mean(log_ratio_BxT, mask_BxT, denoms),
        **_by_outcome("gate", gate_BxT, b["adv_B"], mask_BxT, denoms),
        **_by_outcome("weight", w_BxT, b["adv_B"], mask_BxT, denoms),
    }
    return _finish(pg_loss, logp_BxT, b, hp, denoms, metrics)


def _sequence_log_ratio(b: LossBatch) -> jax.Array:
    """D_i = log pi_ref(y_i) - log pi_nora(y_i) [B]: the response's log-ratio summed over its tokens."""
    return jnp.sum((b["logp_ref_BxT"] - b["logp_nora_BxT"]) * b["mask_BxT"], axis=1)


@register_loss("dora_sequence", reads=_PG + ("beta", "delta", "tau", "psi_form"))
def dora_sequence_loss(logp_BxT: jax.Array, b: LossBatch, hp: Any,
                       denoms: Denoms) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Formulation 2 with a sequence-level disagreement (docs/design.md §3.2): a strategy is a choice of the
    whole response, so the gate and the log-ratio are the response's, D_i = log pi_ref(y_i) / pi_nora(y_i):

    w_i = sg(1(D_i > 0) clip(psi_i D_i, -delta, delta)) on every token of response i;
    loss = -agg(min(rho w, clip(rho, 1 - eps_low, 1 + eps_high) w)). D_i sums over tokens, so it is often
    several nats and psi_i D_i reaches the clip: the weight is then delta (or -delta under a signed psi).
    """
    mask_BxT = b["mask_BxT"]
    d_B = _sequence_log_ratio(b)
    psi_BxT = psi(b["adv_B"], b["logp_ref_BxT"], hp)
    gate_BxT = _per_token(d_B > 0, logp_BxT)
    w_BxT = gate_BxT * jnp.clip(psi_BxT * _per_token(d_B, logp_BxT), -hp.delta, hp.delta)
    pg_loss = -agg(_ppo_surrogate(_ratio(logp_BxT, b["logp_old_BxT"]), w_BxT, hp), mask_BxT, hp.agg, denoms)
    metrics = {
        "indicator_frac": _token_mean(gate_BxT, mask_BxT, denoms),
        "weight_mean": _token_mean(w_BxT, mask_BxT, denoms),
        "psi_mean": _token_mean(psi_BxT, mask_BxT, denoms),
        "seq_log_ratio_mean": jnp.sum(d_B) / denoms.seqs,
        **_by_outcome("gate", gate_BxT, b["adv_B"], mask_BxT, denoms),
        **_by_outcome("weight", w_BxT, b["adv_B"], mask_BxT, denoms),
    }
    return _finish(pg_loss, logp_BxT, b, hp, denoms, metrics)


@register_loss("dora_complement", reads=_PG + ("nora_push", "nora_samples"))
def dora_complement_loss(logp_BxT: jax.Array, b: LossBatch, hp: Any,
                         denoms: Denoms) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO on a complementarity advantage (docs/design.md §3.2): an above-average response is reinforced only when
    it lies outside Nora's modes, D_i = log pi_ref(y_i) / pi_nora(y_i) > 0 (Ref favours it more than Nora does);
    a below-average one is pushed down as in GRPO:

    A'_i = (A_i 1(D_i > 0) if A_i > 0 else A_i) - nora_push 1(D_i <= 0);
    loss = -agg(min(rho A', clip(rho, 1 - eps_low, 1 + eps_high) A')). nora_push > 0 also pushes Dora out of
    Nora's modes (by default 0: they are only not reinforced). nora_samples > 0 makes the rollout source sample
    Nora on each prompt and scale the rewards by (1 - her success rate there) before the advantage.
    """
    mask_BxT = b["mask_BxT"]
    d_B = _sequence_log_ratio(b)
    adv_B = b["adv_B"]
    outside_B = d_B > 0
    adv_B = jnp.where(adv_B > 0, adv_B * outside_B, adv_B) - hp.nora_push * ~outside_B
    loss, metrics = grpo_loss(logp_BxT, LossBatch({**b, "adv_B": adv_B}), hp, denoms)  # GRPO on A'
    metrics.update({
        "indicator_frac": _token_mean(_per_token(outside_B, logp_BxT), mask_BxT, denoms),
        "seq_log_ratio_mean": jnp.sum(d_B) / denoms.seqs,
        **_by_outcome("weight", _per_token(adv_B, logp_BxT), b["adv_B"], mask_BxT, denoms),
    })
    return loss, metrics


@register_loss("dora_contrastive", reads=_PG + ("beta", "tau", "psi_form"))
def dora_contrastive_loss(logp_BxT: jax.Array, b: LossBatch, hp: Any,
                          denoms: Denoms) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dora, the authors' released contrastive variant (docs/design.md §3.2):

    loss = -agg(psi_t (lD_t + sg(lR_t - lN_t))); the released code's psi is hp.psi_form = "ref_weighted"
    (configs/contrastive.py);
    on-policy by construction (no ratio), gradient -agg(psi grad lD).
    """
    mask_BxT = b["mask_BxT"]
    log_ratio_BxT = b["logp_ref_BxT"] - b["logp_nora_BxT"]
    psi_BxT = psi(b["adv_B"], b["logp_ref_BxT"], hp)
    pg_loss = -agg(psi_BxT * (logp_BxT + log_ratio_BxT), mask_BxT, hp.agg, denoms)
    metrics = {
        "psi_mean": _token_mean(psi_BxT, mask_BxT, denoms),
        "log_ratio_mean": _token_mean(log_ratio_BxT, mask_BxT, denoms),
    }
    return _finish(pg_loss, logp_BxT, b, hp, denoms, metrics)


# ----------------------------------------------------------------------------- advantages


def grpo_advantages(rewards_PxG: jax.Array, norm_by_std: bool = True, ddof: int = 1, eps: float = 1e-6) -> jax.Array:
    """A_i = (r_i - mean(r)) / (std(r) + eps) within each group (GRPO); no std division for Dr.GRPO.

    A group whose rewards are all equal (including a group of one) gets exactly 0, never NaN:
    float32 rounding of the mean would otherwise leave tiny residuals that the std division inflates.
    """
    rewards_PxG = jnp.asarray(rewards_PxG, jnp.float32)
    G = rewards_PxG.shape[1]
    centred_PxG = rewards_PxG - jnp.mean(rewards_PxG, axis=1, keepdims=True)
    if norm_by_std:
        # max(G - ddof, 1): a group of one has variance 0 instead of 0/0.
        std_Px1 = jnp.sqrt(jnp.sum(centred_PxG**2, axis=1, keepdims=True) / max(G - ddof, 1))
        centred_PxG = centred_PxG / (std_Px1 + eps)
    all_equal_Px1 = jnp.max(rewards_PxG, axis=1, keepdims=True) == jnp.min(rewards_PxG, axis=1, keepdims=True)
    return jnp.where(all_equal_Px1, 0.0, centred_PxG)


def _check_set_size(N: int, n: int) -> None:
    if not 1 <= n <= N:
        raise ValueError(f"Set size {n} must be in [1, N={N}] (N = responses per prompt); "
                         "fix objective.set_size / objective.k or objective.group_size.")


def _subsets(N: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Static index arrays of all C(N, n) subsets [C, n] and their membership matrix [C, N]."""
    _check_set_size(N, n)
    idx_Cxn = np.array(list(itertools.combinations(range(N), n)), np.int32)
    member_CxN = np.zeros((len(idx_Cxn), N), np.float32)
    np.put_along_axis(member_CxN, idx_Cxn, 1.0, axis=1)
    return idx_Cxn, member_CxN


def set_advantages(f: Callable[[jax.Array, jax.Array | None, int], jax.Array], rewards_PxN: jax.Array,
                   clusters_PxN: jax.Array | None, n: int) -> jax.Array:
    """Marginal set advantages (Polychromic Objectives / Poly-EPO, docs/design.md §3.3):

    fbar = mean_S f(S) over all C(N, n) subsets S; A_i = mean_{S containing i} (f(S) - fbar).
    `f([P, C, n] rewards, [P, C, n] clusters or None, n) -> [P, C]` scores all subsets at once.
    """
    rewards_PxN = jnp.asarray(rewards_PxN, jnp.float32)
    N = rewards_PxN.shape[1]
    idx_Cxn, member_CxN = _subsets(N, n)
    clusters_PxCxn = None if clusters_PxN is None else jnp.asarray(clusters_PxN)[:, idx_Cxn]
    scores_PxC = f(rewards_PxN[:, idx_Cxn], clusters_PxCxn, n)
    centred_PxC = scores_PxC - jnp.mean(scores_PxC, axis=1, keepdims=True)
    # HIGHEST: TPUs would otherwise run this f32 matmul in bf16.
    summed_PxN = jnp.einsum("pc,cn->pn", centred_PxC, member_CxN, precision=jax.lax.Precision.HIGHEST)
    return summed_PxN / math.comb(N - 1, n - 1)  # every i lies in C(N-1, n-1) subsets


def poly_epo_score(rewards_PxCxn: jax.Array, clusters_PxCxn: jax.Array, n: int) -> jax.Array:
    """Poly-EPO set score f(S) = mean_{i in S} r_i * |{c_i : i in S, c_i >= 0}| / n (id -1: no strategy)."""
    if clusters_PxCxn is None:
        raise ValueError("poly_epo needs strategy cluster ids per response; the batch has none (clusters=None).")
    c = clusters_PxCxn
    # An id counts once, at its first position in the subset: no equal id at an earlier position.
    earlier_nxn = np.tril(np.ones((n, n), bool), k=-1)  # [j, k] = k < j
    seen_before_PxCxn = jnp.any((c[..., :, None] == c[..., None, :]) & earlier_nxn[None, None], axis=-1)
    distinct_PxC = jnp.sum((c >= 0) & ~seen_before_PxCxn, axis=-1)
    return jnp.mean(rewards_PxCxn, axis=-1) * distinct_PxC / n


def pass_at_k_score(rewards_PxCxn: jax.Array, clusters_PxCxn: jax.Array | None, n: int) -> jax.Array:
    """Pass@k set score f(S) = max_{i in S} r_i (clusters ignored)."""
    del clusters_PxCxn, n
    return jnp.max(rewards_PxCxn, axis=-1)


def pass_at_k_analytic_advantages(rewards_PxN: jax.Array, k: int) -> jax.Array:
    """Analytic Pass@k-training advantage (Chen et al. 2025, "Pass@k Training ...", §3.3), rewards binarised at > 0:

    Rbar = 1 - C(N_neg, k) / C(N, k) (the group's pass@k), sigma = sqrt(Rbar (1 - Rbar)),
    A_pos = (1 - Rbar) / sigma, A_neg = (1 - Rbar - C(N_neg - 1, k - 1) / C(N - 1, k - 1)) / sigma.
    It equals the pass_at_k set advantage (subsets of size k) divided by sigma; sigma = 0 gives 0.
    """
    rewards_PxN = jnp.asarray(rewards_PxN, jnp.float32)
    N = rewards_PxN.shape[1]
    _check_set_size(N, k)
    # Binomial ratios for every possible N_neg, tabulated exactly at trace time (N, k are static).
    all_neg_N1 = np.array([math.comb(j, k) / math.comb(N, k) for j in range(N + 1)], np.float32)
    neg_all_neg_N1 = np.array([math.comb(j - 1, k - 1) / math.comb(N - 1, k - 1) if j else 0.0
                               for j in range(N + 1)], np.float32)
    correct_PxN = rewards_PxN > 0
    n_neg_P = N - jnp.sum(correct_PxN, axis=1)
    pass_k_Px1 = (1.0 - jnp.asarray(all_neg_N1)[n_neg_P])[:, None]
    sigma_Px1 = jnp.sqrt(pass_k_Px1 * (1.0 - pass_k_Px1))
    adv_neg_Px1 = 1.0 - pass_k_Px1 - jnp.asarray(neg_all_neg_N1)[n_neg_P][:, None]
    adv_PxN = jnp.where(correct_PxN, 1.0 - pass_k_Px1, adv_neg_Px1)
    # sigma = 0 means Rbar is exactly 0 or 1 (exact table entries), where both numerators are exactly 0.
    return adv_PxN / jnp.where(sigma_Px1 > 0, sigma_Px1, 1.0)


@register_advantage("grpo")
def _grpo(rewards_PxG: jax.Array, clusters_PxG: jax.Array | None, hp: Any) -> jax.Array:
    """GRPO: (r - mean) / (std + eps) per group (docs/design.md §3.3)."""
    del clusters_PxG, hp
    return grpo_advantages(rewards_PxG)


@register_advantage("dr_grpo")
def _dr_grpo(rewards_PxG: jax.Array, clusters_PxG: jax.Array | None, hp: Any) -> jax.Array:
    """Dr.GRPO: r - mean per group, no std division (docs/design.md §3.3)."""
    del clusters_PxG, hp
    return grpo_advantages(rewards_PxG, norm_by_std=False)


@register_advantage("poly_epo", reads=("set_size",))
def _poly_epo(rewards_PxG: jax.Array, clusters_PxG: jax.Array | None, hp: Any) -> jax.Array:
    """Poly-EPO marginal set advantage, subsets of size hp.set_size, no std normalisation (docs/design.md §3.3)."""
    return set_advantages(poly_epo_score, rewards_PxG, clusters_PxG, hp.set_size)


@register_advantage("pass_at_k", reads=("set_size",))
def _pass_at_k(rewards_PxG: jax.Array, clusters_PxG: jax.Array | None, hp: Any) -> jax.Array:
    """Pass@k marginal set advantage f(S) = max r, subsets of size hp.set_size (docs/design.md §3.3)."""
    return set_advantages(pass_at_k_score, rewards_PxG, None, hp.set_size)


@register_advantage("grpo_diversity", reads=("diversity_bonus",))
def _grpo_diversity(rewards_PxG: jax.Array, clusters_PxG: jax.Array | None, hp: Any) -> jax.Array:
    """GRPO on a diversity-shaped reward (docs/design.md §3.3): r_i + lambda * r_i / m_i, where m_i counts the group's
    rewarded responses in i's cluster (lambda = hp.diversity_bonus; cluster -1 earns no bonus).

    A correct response with a strategy no other correct sample used earns the full bonus; the
    baseline of the set-RL comparison (a per-sample novelty bonus instead of a set score).
    """
    if clusters_PxG is None:
        raise ValueError("grpo_diversity needs cluster ids (config.diversity).")
    rewarded_PxG = rewards_PxG > 0
    same_PxGxG = (clusters_PxG[:, :, None] == clusters_PxG[:, None, :]) & rewarded_PxG[:, None, :]
    m_PxG = jnp.sum(same_PxGxG, axis=-1)
    novelty_PxG = jnp.where(rewarded_PxG & (clusters_PxG >= 0), 1.0 / jnp.maximum(m_PxG, 1), 0.0)
    return grpo_advantages(rewards_PxG + hp.diversity_bonus * rewards_PxG * novelty_PxG)


@register_advantage("pass_at_k_analytic", reads=("k",))
def _pass_at_k_analytic(rewards_PxG: jax.Array, clusters_PxG: jax.Array | None, hp: Any) -> jax.Array:
    """Chen et al. 2025 analytic Pass@k-training advantage with k = hp.k (docs/design.md §3.3)."""
    del clusters_PxG
    return pass_at_k_analytic_advantages(rewards_PxG, hp.k)
