"""Tests for dora_jax.objectives: golden values worked by hand, gradients, set advantages, accumulation."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dora_jax import objectives as obj

LN2, E = math.log(2.0), math.e
AGG_MODES = obj.AGG_MODES


def hp(**kw):
    """The objective config section with its defaults, `kw` overriding them."""
    c = obj.default_config()
    c.update(kw)
    return c


def f32(x):
    return np.asarray(x, np.float32)


def run_loss(name, logp_BxT, batch, hparams):
    return obj.get_loss(name)(jnp.asarray(logp_BxT, jnp.float32), batch, hparams, obj.denoms_of(batch["mask_BxT"]))


def loss_grad(name, logp_BxT, batch, hparams, denoms=None):
    """(loss, metrics), d loss / d logp_BxT."""
    denoms = obj.denoms_of(batch["mask_BxT"]) if denoms is None else denoms
    fn = obj.get_loss(name)
    return jax.value_and_grad(lambda l: fn(l, batch, hparams, denoms), has_aux=True)(jnp.asarray(logp_BxT))


def close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float64), rtol=1e-5, atol=atol)


def agg_weight(mask_BxT, mode):
    """d agg(x) / d x by hand: what each token's value is multiplied by."""
    B, T = mask_BxT.shape
    if mode == "token-mean":
        return mask_BxT / max(mask_BxT.sum(), 1.0)
    if mode == "seq-mean-token-mean":
        return mask_BxT / np.maximum(mask_BxT.sum(1, keepdims=True), 1.0) / B
    return mask_BxT / T / B


# ----------------------------------------------------------------------------- aggregation


def test_denoms_and_agg_golden():
    x = f32([[1, 2, 3], [4, 5, 6]])
    m = f32([[1, 1, 0], [1, 0, 0]])
    d = obj.denoms_of(m)
    close([d.tokens, d.seqs, d.max_len], [3, 2, 3])
    close(obj.agg(x, m, "token-mean", d), (1 + 2 + 4) / 3)
    close(obj.agg(x, m, "seq-mean-token-mean", d), ((1 + 2) / 2 + 4 / 1) / 2)
    close(obj.agg(x, m, "seq-mean-token-sum-norm", d), ((1 + 2) / 3 + 4 / 3) / 2)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_agg_empty_mask_is_zero(mode):
    m = np.zeros((2, 3), np.float32)
    d = obj.denoms_of(m)
    assert float(d.tokens) == 1.0
    assert float(obj.agg(f32(np.full((2, 3), 7.0)), m, mode, d)) == 0.0


def test_agg_unknown_mode():
    m = f32([[1.0]])
    with pytest.raises(ValueError, match="token-mean"):
        obj.agg(m, m, "token-sum", obj.denoms_of(m))


# ----------------------------------------------------------------------------- psi


def test_psi_golden():
    lR = f32([[math.log(0.25), math.log(0.5)], [0.0, math.log(0.1)]])
    # exp_adv: exp(A / beta) per sequence, broadcast over tokens.
    close(obj.psi(f32([1.0, -1.0]), lR, hp(psi_form="exp_adv", beta=0.5)), [[E**2, E**2], [E**-2, E**-2]])
    # ref_weighted: pi_ref e^{tau A} / beta = 0.25 e^{2 * 0.5} / 0.5 = 0.5 e, ...
    got = obj.psi(f32([0.5, 0.0]), lR, hp(psi_form="ref_weighted", beta=0.5, tau=2.0))
    close(got, [[0.5 * E, 1.0 * E], [2.0, 0.2]])
    # A per token is accepted as is; defaults are exp_adv with beta = 1.
    close(obj.psi(f32([[0.0, 1.0], [2.0, -1.0]]), lR, hp()), [[1, E], [E**2, E**-1]])
    with pytest.raises(ValueError, match="ref_weighted"):
        obj.psi(f32([0.0, 0.0]), lR, hp(psi_form="nope"))


def test_tiny_beta_never_overflows():
    # beta = 0.01 (a paper value) with A = 3: exp(300) overflows float32 unless capped.
    mask = f32([[1, 1]])
    batch = {"mask_BxT": mask, "logp_old_BxT": f32([[-1, -1]]), "logp_ref_BxT": f32([[-1, -1]]),
             "logp_nora_BxT": f32([[-1.5, -0.5]]), "adv_B": f32([3.0])}
    for name in ("dora_indicator", "dora_clipped"):
        loss, metrics = run_loss(name, f32([[-1, -1]]), batch, hp(beta=0.01))
        assert all(np.isfinite(float(v)) for v in [loss, *metrics.values()]), (name, metrics)
    _, metrics = run_loss("dora_indicator", f32([[-1, -1]]), batch, hp(beta=0.01, delta=2.0))
    close(metrics["weight_mean"], (2.0 + 0.0) / 2)  # gate open on token 0 only, where w saturates at delta


# ----------------------------------------------------------------------------- losses: golden values


def grpo_batch():
    lOld = f32([[-1.0, -2.0], [-1.5, -0.7]])
    lD = lOld + f32([[math.log(1.5), 0.0], [math.log(0.5), 5.0]])  # rho = 1.5, 1, 0.5, (masked)
    # lR - lD = ln 2, 0, -ln 2; the masked token's 100 would overflow exp() if it were not masked first.
    lR = lD + f32([[LN2, 0.0], [-LN2, 100.0]])
    batch = {"mask_BxT": f32([[1, 1], [1, 0]]), "logp_old_BxT": lOld, "logp_ref_BxT": lR,
             "logp_nora_BxT": lR, "adv_B": f32([1.0, -2.0]), "entropy_BxT": f32([[1, 2], [3, 99]])}
    return lD, batch


def test_grpo_golden():
    lD, batch = grpo_batch()
    loss, m = run_loss("grpo", lD, batch, hp(entropy_coef=0.01, beta_kl=0.001))
    # min(rho A, clip(rho) A): token 0: min(1.5, 1.2) = 1.2; token 1: 1; token 2: min(0.5*-2, 0.8*-2) = -1.6.
    pg = -(1.2 + 1.0 - 1.6) / 3
    # k3 = e^d - d - 1: d = ln 2 -> 1 - ln 2; d = 0 -> 0; d = -ln 2 -> ln 2 - 0.5.
    kl = ((1 - LN2) + 0.0 + (LN2 - 0.5)) / 3
    entropy = (1 + 2 + 3) / 3
    close(m["pg_loss"], pg)
    close(m["kl_ref"], kl)
    close(m["entropy"], entropy)
    close(m["clip_frac"], 2 / 3)  # tokens 0 and 2 take the clipped branch
    close(loss, pg + 0.001 * kl - 0.01 * entropy)
    close(m["loss"], loss)


def test_grpo_empty_mask_is_zero_and_finite():
    lD, batch = grpo_batch()
    batch = {**batch, "mask_BxT": np.zeros_like(batch["mask_BxT"])}
    (loss, m), g = loss_grad("grpo", lD, batch, hp(entropy_coef=0.01))
    assert float(loss) == 0.0
    assert all(float(v) == 0.0 for v in m.values())
    assert np.all(np.asarray(g) == 0.0)


def test_dora_indicator_golden():
    x = f32([[2.0, 1.0, -1.0, 0.0], [5.0, 5.0, 5.0, 5.0]])  # lR - lN; row 1 is masked out
    lN = f32([[-3, -2, -1, -1], [-9, -9, -9, -9]])
    lR = lN + x
    lOld = f32([[-1, -1, -1, -1], [-1, -1, -1, -1]])
    lD = lOld + np.log(f32([[1.5, 0.5, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]]))
    batch = {"mask_BxT": f32([[1, 1, 1, 1], [0, 0, 0, 0]]), "logp_old_BxT": lOld, "logp_ref_BxT": lR,
             "logp_nora_BxT": lN, "adv_B": f32([0.5, 1.0])}
    loss, m = run_loss("dora_indicator", lD, batch, hp(beta=1.0, delta=2.0, beta_kl=0.1, psi_form="exp_adv"))
    # psi = e^0.5; w = [clip(2 e^.5) = 2, e^.5, gate closed, gate closed (x = 0 is not > 0)];
    # min(rho, clip(rho, .8, 1.2)) = [1.2, 0.5, 1, 1].
    pg = -(2 * 1.2 + E**0.5 * 0.5) / 4
    # lR - lD = [-ln 1.5, ln 2, -1, 0] -> k3 = [1/1.5 + ln 1.5 - 1, 1 - ln 2, e^-1, 0].
    kl = (1 / 1.5 + math.log(1.5) - 1 + 1 - LN2 + E**-1) / 4
    close(m["pg_loss"], pg)
    close(m["kl_ref"], kl)
    close(loss, pg + 0.1 * kl)
    close(m["indicator_frac"], 2 / 4)
    close(m["weight_mean"], (2 + E**0.5) / 4)
    close(m["psi_mean"], E**0.5)
    close(m["log_ratio_mean"], (2 + 1 - 1 + 0) / 4)
    assert "entropy" not in m  # no entropy in the batch -> no bonus, no metric


def clipped_batch():
    # Row 0 (A = 1): x = lR - lN = [0.2, 2.5, -3.5, -2.3], u = lR + A = [0.5, 0.5, -3.5, -1.5].
    # Row 1 (A = -0.5): x = -0.8, u = -1.5; tokens 1..3 are masked out (x = 10 would dominate otherwise).
    lR = f32([[-0.5, -0.5, -4.5, -2.5], [-1.0, -1.0, -1.0, -1.0]])
    lN = f32([[-0.7, -3.0, -1.0, -0.2], [-0.2, -11.0, -11.0, -11.0]])
    lOld = f32([[-1.0, -2.0, -3.0, -1.0], [-2.0, -1.0, -1.0, -1.0]])
    batch = {"mask_BxT": f32([[1, 1, 1, 1], [1, 0, 0, 0]]), "logp_old_BxT": lOld, "logp_ref_BxT": lR,
             "logp_nora_BxT": lN, "adv_B": f32([1.0, -0.5])}
    return lOld, batch


def test_dora_clipped_golden():
    lD, batch = clipped_batch()  # lD = lOld: rho = 1
    loss, m = run_loss("dora_clipped", lD, batch, hp(beta=1.0, delta=2.0, credit="token"))
    # c = min(max(x, -2), u) = [0.2, 0.5 (high), -3.5 (u < -delta: upper wins), -2.0 (low)], [-1.5 (high)].
    close(m["pg_loss"], -(0.2 + 0.5 - 3.5 - 2.0 - 1.5) / 5)
    close(loss, 6.3 / 5 + 0.0)  # beta_kl defaults to 0 for Dora losses
    close(m["clip_frac_high"], 3 / 5)
    close(m["clip_frac_low"], 1 / 5)
    close(m["log_ratio_mean"], (0.2 + 2.5 - 3.5 - 2.3 - 0.8) / 5)
    close(m["psi_mean"], (4 * E + E**-0.5) / 5)  # exp(A / beta) per token
    close(m["kl_ref"], (np.exp(batch["logp_ref_BxT"] - lD) - (batch["logp_ref_BxT"] - lD) - 1)[[0, 0, 0, 0, 1],
                                                                                                [0, 1, 2, 3, 0]].mean())


def test_dora_clipped_upper_bound_wins_below_lower():
    # x = 1 > -delta but u = lR + A / beta = -4 + 1 = -3 < -delta = -2: c = min(max(1, -2), -3) = -3.
    batch = {"mask_BxT": f32([[1]]), "logp_old_BxT": f32([[-1]]), "logp_ref_BxT": f32([[-4]]),
             "logp_nora_BxT": f32([[-5]]), "adv_B": f32([1.0])}
    loss, m = run_loss("dora_clipped", f32([[-1]]), batch, hp())
    close(loss, 3.0)
    close([m["clip_frac_high"], m["clip_frac_low"]], [1.0, 0.0])


def test_dora_clipped_return_credit_golden():
    lD, batch = clipped_batch()
    loss, _ = run_loss("dora_clipped", lD, batch, hp(credit="return"))
    # Row 0 reverse cumulative sums of c = [0.2, 0.5, -3.5, -2]: [-4.8, -5.0, -5.5, -2.0]; row 1: [-1.5].
    close(loss, -(-4.8 - 5.0 - 5.5 - 2.0 - 1.5) / 5)
    # Masked-out tokens inside a sequence (handover windows) are skipped by the return:
    # c = [1, (masked), 2] -> returns [3, ., 2].
    batch = {"mask_BxT": f32([[1, 0, 1]]), "logp_old_BxT": f32([[-1, -1, -1]]), "logp_ref_BxT": f32([[-1, -1, -1]]),
             "logp_nora_BxT": f32([[-2, -11, -3]]), "adv_B": f32([10.0])}
    loss, _ = run_loss("dora_clipped", f32([[-1, -1, -1]]), batch, hp(credit="return"))
    close(loss, -(3 + 2) / 2)
    with pytest.raises(ValueError, match="return"):
        run_loss("dora_clipped", f32([[-1, -1, -1]]), batch, hp(credit="future"))


def contrastive_batch():
    batch = {"mask_BxT": f32([[1, 1, 0]]), "logp_old_BxT": f32([[0, 0, 0]]),
             "logp_ref_BxT": f32([[math.log(0.5), math.log(0.25), 0.0]]),
             "logp_nora_BxT": f32([[math.log(0.25), math.log(0.25), -50.0]]), "adv_B": f32([0.0])}
    return f32([[-1.0, -2.0, -7.0]]), batch


def test_dora_contrastive_golden():
    lD, batch = contrastive_batch()
    # The released code's psi_form (configs/contrastive.py): psi = pi_ref e^0 / 1 = [0.5, 0.25];
    # lR - lN = [ln 2, 0]: loss = -(0.5 (-1 + ln 2) + 0.25 (-2 + 0)) / 2.
    loss, m = run_loss("dora_contrastive", lD, batch, hp(psi_form="ref_weighted"))
    close(loss, -(0.5 * (-1 + LN2) + 0.25 * -2) / 2)
    close(m["psi_mean"], (0.5 + 0.25) / 2)
    close(m["log_ratio_mean"], LN2 / 2)
    # The paper's psi_form: exp_adv with A = 0 gives psi = 1.
    loss, _ = run_loss("dora_contrastive", lD, batch, hp(psi_form="exp_adv"))
    close(loss, -((-1 + LN2) + (-2 + 0)) / 2)


def test_losses_declare_the_trees_they_read():
    assert obj.trees_read(hp(loss="sft")) == ()
    assert obj.trees_read(hp(loss="grpo", beta_kl=0.0)) == ()
    assert obj.trees_read(hp(loss="grpo", beta_kl=0.001)) == ("ref",)
    for name in ("dora_indicator", "dora_clipped", "dora_contrastive", "dora_sequence", "dora_complement"):
        assert obj.trees_read(hp(loss=name)) == ("ref", "nora")
    lD, batch = clipped_batch()
    without_ref = {k: v for k, v in batch.items() if k != "logp_ref_BxT"}
    # GRPO without ref: no k3 term and no kl_ref metric, rather than a KL to its own log-probs.
    _, m = run_loss("grpo", lD, without_ref, hp(beta_kl=0.0))
    assert "kl_ref" not in m
    with pytest.raises(KeyError, match="did not declare"):
        run_loss("dora_indicator", lD, without_ref, hp())
    with pytest.raises(KeyError, match="did not declare"):  # a k3 term needs ref: never a silent zero
        run_loss("grpo", lD, without_ref, hp(beta_kl=0.01))


# ----------------------------------------------------------------------------- losses: gradients


def random_batch(seed, B=4, T=6, stale=0.0):
    rng = np.random.default_rng(seed)
    lD = f32(-rng.exponential(1.0, (B, T)))
    mask = f32(rng.random((B, T)) < 0.7)
    mask[-1] = 0.0  # one sequence fully masked out (e.g. all Nora windows under handover)
    batch = {
        "mask_BxT": mask,
        "logp_old_BxT": f32(lD - stale * rng.standard_normal((B, T))),
        "logp_ref_BxT": f32(lD + 0.5 * rng.standard_normal((B, T))),
        "logp_nora_BxT": f32(lD + 0.5 * rng.standard_normal((B, T))),
        "adv_B": f32(rng.standard_normal(B)),
        "entropy_BxT": f32(rng.random((B, T))),
    }
    return lD, batch


@pytest.mark.parametrize("mode", AGG_MODES)
def test_on_policy_gradients_match_stated_forms(mode):
    lD, b = random_batch(0)  # logp_old == logp: rho = 1
    h = hp(agg=mode, beta=0.7, tau=1.3, delta=0.6, beta_kl=0.01, entropy_coef=0.05)
    W = agg_weight(b["mask_BxT"], mode)
    A_Bx1 = b["adv_B"][:, None]
    lR, lN = b["logp_ref_BxT"], b["logp_nora_BxT"]
    x = lR - lN
    dk3 = 0.01 * (1 - np.exp(lR - lD)) * W  # d/dlD of beta_kl (e^{lR-lD} - (lR-lD) - 1); entropy is data
    w = np.where(x > 0, np.clip(np.exp(A_Bx1 / 0.7) * x, -0.6, 0.6), 0.0)
    c = np.minimum(np.maximum(x, -0.6), lR + A_Bx1 / 0.7)
    c_return = np.cumsum((c * b["mask_BxT"])[:, ::-1], axis=1)[:, ::-1]
    psi_ref = np.exp(lR + 1.3 * A_Bx1 - math.log(0.7))
    w_signed = np.where(x > 0, np.clip((np.exp(A_Bx1 / 0.7) - 1) * x, -0.6, 0.6), 0.0)
    d_Bx1 = np.sum(x * b["mask_BxT"], axis=1, keepdims=True)  # log pi_ref(y) / pi_nora(y)
    w_seq = np.broadcast_to(np.where(d_Bx1 > 0, np.clip(np.exp(A_Bx1 / 0.7) * d_Bx1, -0.6, 0.6), 0.0), x.shape)
    adv_complement = np.broadcast_to(np.where(A_Bx1 > 0, A_Bx1 * (d_Bx1 > 0), A_Bx1), x.shape)
    assert (w_signed < 0).any() and (d_Bx1 > 0).any() and (d_Bx1 < 0).any()  # every branch is exercised
    expected = {
        ("grpo", "token"): -A_Bx1 * W + dk3,
        ("dora_indicator", "token"): -w * W + dk3,
        ("dora_clipped", "token"): -c * W + dk3,
        ("dora_clipped", "return"): -c_return * W + dk3,
        ("dora_contrastive", "token"): -psi_ref * W + dk3,
        ("dora_sequence", "token"): -w_seq * W + dk3,
        ("dora_complement", "token"): -adv_complement * W + dk3,
        ("dora_indicator", "signed"): -w_signed * W + dk3,
        ("dora_complement", "push"): -(adv_complement - 0.3 * (d_Bx1 <= 0)) * W + dk3,
    }
    for (name, credit), grad in expected.items():
        form = "ref_weighted" if name == "dora_contrastive" else "exp_adv"  # the released code's psi for its loss
        form, credit = ("signed", "token") if credit == "signed" else (form, credit)
        push, credit = (0.3, "token") if credit == "push" else (0.0, credit)
        _, g = loss_grad(name, lD, b, hp(**{**h.to_dict(), "credit": credit, "psi_form": form, "nora_push": push}))
        close(g, grad, atol=1e-6)
    assert np.abs(expected[("dora_clipped", "token")]).max() > 0.01  # the released code's version had no gradient


def test_entropy_bonus_is_differentiated_when_entropy_is():
    lD, b = random_batch(1)
    fn = obj.get_loss("dora_indicator")
    d = obj.denoms_of(b["mask_BxT"])
    g = jax.grad(lambda e: fn(jnp.asarray(lD), {**b, "entropy_BxT": e}, hp(entropy_coef=0.05), d)[0])(
        jnp.asarray(b["entropy_BxT"]))
    close(g, -0.05 * agg_weight(b["mask_BxT"], "token-mean"), atol=1e-7)


def test_dora_clipped_gradient_nonzero_off_policy():
    lD, b = random_batch(2, stale=0.1)
    _, g = loss_grad("dora_clipped", lD, b, hp())
    assert np.abs(np.asarray(g)).max() > 1e-3


def test_dora_indicator_zero_gradient_when_ref_not_above_nora():
    lD, b = random_batch(3, stale=0.3)
    lN = b["logp_ref_BxT"] + np.abs(b["logp_nora_BxT"] - b["logp_ref_BxT"])
    lN[0, :2] = b["logp_ref_BxT"][0, :2]  # lR == lN: the gate is strict
    b = {**b, "logp_nora_BxT": f32(lN)}
    b.pop("entropy_BxT")
    (loss, m), g = loss_grad("dora_indicator", lD, b, hp(beta=0.1))
    assert np.all(np.asarray(g) == 0.0)
    assert float(m["indicator_frac"]) == 0.0 and float(loss) == 0.0


def test_grpo_ppo_clip_zeroes_gradient_outside_trust_region():
    rho = f32([1.5, 0.5, 1.5, 0.5])
    lOld = f32([[-1.0], [-1.0], [-1.0], [-1.0]])
    lD = lOld + np.log(rho)[:, None]
    batch = {"mask_BxT": f32(np.ones((4, 1))), "logp_old_BxT": lOld, "logp_ref_BxT": lD, "logp_nora_BxT": lD,
             "adv_B": f32([1.0, -1.0, -1.0, 1.0])}
    (_, m), g = loss_grad("grpo", lD, batch, hp(beta_kl=0.0))
    # rho > 1 + eps with A > 0 and rho < 1 - eps with A < 0 are clipped: no gradient.
    # The other two take the unclipped branch: d/dlD -(rho A) / 4 = -rho A / 4.
    close(np.asarray(g)[:, 0], [0.0, 0.0, 1.5 / 4, -0.5 / 4])
    close(m["clip_frac"], 2 / 4)


def test_dora_ppo_clip_zeroes_gradient_outside_trust_region():
    lOld = f32([[-1.0, -1.0]])
    lD = lOld + np.log(f32([[1.5, 0.5]]))
    # Indicator (w > 0): rho = 1.5 is clipped at 1.2 (no gradient); rho = 0.5 keeps gradient -w rho / 2.
    batch = {"mask_BxT": f32([[1, 1]]), "logp_old_BxT": lOld, "logp_ref_BxT": f32([[-1.0, -1.0]]),
             "logp_nora_BxT": f32([[-1.5, -1.5]]), "adv_B": f32([0.0])}
    _, g = loss_grad("dora_indicator", lD, batch, hp())
    close(g, [[0.0, -0.5 * 0.5 / 2]])
    # Clipped acts as PPO with advantage c: x = lR - lN = [0.5, -1.5], u = lR + 0 = [-1, -2], so
    # c = min(max(x, -2), u) = [-1, -2]. rho = 1.5 with c < 0 is unclipped (min picks 1.5 c, gradient
    # -1.5 c / 2); rho = 0.5 with c < 0 is clipped at 0.8 (no gradient).
    batch = {**batch, "logp_ref_BxT": f32([[-1.0, -2.0]]), "logp_nora_BxT": f32([[-1.5, -0.5]])}
    _, g = loss_grad("dora_clipped", lD, batch, hp())
    close(g, [[-(1.5 * -1.0) / 2, 0.0]])


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_sums_equal_full_batch(mode):
    lD, b = random_batch(4, stale=0.3)
    lD = f32(lD + 0.1)
    d = obj.denoms_of(b["mask_BxT"])
    configs = [("grpo", "token"), ("dora_indicator", "token"), ("dora_clipped", "token"),
               ("dora_clipped", "return"), ("dora_contrastive", "token"), ("dora_sequence", "token"),
               ("dora_complement", "token")]
    for name, credit in configs:
        h = hp(agg=mode, beta_kl=0.02, entropy_coef=0.01, credit=credit, beta=0.5)
        (loss, m), g = loss_grad(name, lD, b, h, d)
        parts = [loss_grad(name, lD[s], {k: v[s] for k, v in b.items()}, h, d) for s in (slice(0, 2), slice(2, 4))]
        close(parts[0][0][0] + parts[1][0][0], loss, atol=1e-6)
        close(np.concatenate([parts[0][1], parts[1][1]]), g, atol=1e-7)
        for k in m:
            close(parts[0][0][1][k] + parts[1][0][1][k], m[k], atol=1e-6)


def test_losses_jit():
    lD, b = random_batch(5, stale=0.2)
    d = obj.denoms_of(b["mask_BxT"])
    for name in ("grpo", "dora_indicator", "dora_clipped", "dora_contrastive", "dora_sequence", "dora_complement"):
        h = hp(agg="seq-mean-token-sum-norm", credit="return", entropy_coef=0.1)
        fn = obj.get_loss(name)
        eager, _ = fn(jnp.asarray(lD), b, h, d)
        jitted, _ = jax.jit(lambda l, bb, dd: fn(l, bb, h, dd))(jnp.asarray(lD), b, d)
        close(jitted, eager, atol=1e-6)


# ----------------------------------------------------------------------------- advantages


def test_grpo_advantages_golden():
    r = f32([[1, 0, 0, 1], [0.1, 0.1, 0.1, 0.1]])
    std = math.sqrt(4 * 0.25 / 3)  # ddof = 1
    a = obj.grpo_advantages(r)
    close(a[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6))
    assert np.all(np.asarray(a[1]) == 0.0)  # all-equal rewards: exactly zero
    close(obj.grpo_advantages(r, ddof=0)[0], np.array([0.5, -0.5, -0.5, 0.5]) / (0.5 + 1e-6))
    close(obj.grpo_advantages(r, norm_by_std=False)[0], [0.5, -0.5, -0.5, 0.5])
    close(obj.get_advantage("grpo")(r, None, hp()), a)
    close(obj.get_advantage("dr_grpo")(r, None, hp())[0], [0.5, -0.5, -0.5, 0.5])


def test_grpo_advantages_group_of_one():
    r = f32([[3.0], [0.0]])
    for a in (obj.grpo_advantages(r), obj.grpo_advantages(r, norm_by_std=False)):
        assert np.all(np.asarray(a) == 0.0)


def test_poly_epo_golden():
    h = hp(set_size=2)
    # Subsets of size 2 of r = [1, 0, 1], c = [0, 0, 1]: f = mean(r) * distinct / 2:
    # {0,1}: .5 * 1/2 = .25; {0,2}: 1 * 2/2 = 1; {1,2}: .5 * 2/2 = .5; fbar = 1.75 / 3 = 7/12.
    # A_i = mean of f over the subsets holding i, minus fbar.
    a = obj.get_advantage("poly_epo")(f32([[1, 0, 1], [1, 1, 1]]), np.array([[0, 0, 1], [-1, -1, 0]]), h)
    close(a[0], [(0.25 + 1) / 2 - 7 / 12, (0.25 + 0.5) / 2 - 7 / 12, (1 + 0.5) / 2 - 7 / 12])
    # Cluster -1 is no strategy: {0,1}: 0; {0,2}: 1/2; {1,2}: 1/2; fbar = 1/3.
    close(a[1], [0.25 - 1 / 3, 0.25 - 1 / 3, 0.5 - 1 / 3])
    with pytest.raises(ValueError, match="cluster"):
        obj.get_advantage("poly_epo")(f32([[1, 0, 1]]), None, h)


def test_pass_at_k_set_golden():
    # n = 2 of r = [1, 0, 0]: {0,1}: 1, {0,2}: 1, {1,2}: 0; fbar = 2/3.
    a = obj.get_advantage("pass_at_k")(f32([[1, 0, 0]]), None, hp(set_size=2))
    close(a, [[1 - 2 / 3, 0.5 - 2 / 3, 0.5 - 2 / 3]])


def brute_force_set_advantages(score, rewards, clusters, n):
    out = np.zeros(rewards.shape)
    for p in range(rewards.shape[0]):
        subsets = list(itertools.combinations(range(rewards.shape[1]), n))
        f = {S: score([rewards[p, i] for i in S], [clusters[p, i] for i in S]) for S in subsets}
        fbar = sum(f.values()) / len(f)
        for i in range(rewards.shape[1]):
            holding = [f[S] - fbar for S in subsets if i in S]
            out[p, i] = sum(holding) / len(holding)
    return out


def test_set_advantages_match_brute_force():
    rng = np.random.default_rng(0)
    rewards = f32(rng.random((5, 8)))
    rewards[1] = rng.integers(0, 2, 8)
    clusters = rng.integers(-1, 3, (5, 8)).astype(np.int32)
    clusters[2] = -1  # no strategy anywhere
    clusters[3] = 1  # one strategy everywhere

    def poly(r, c):
        return sum(r) / len(r) * len({ci for ci in c if ci >= 0}) / len(r)

    want = brute_force_set_advantages(poly, rewards, clusters, 4)
    close(obj.get_advantage("poly_epo")(rewards, clusters, hp(set_size=4)), want)
    close(jax.jit(lambda r, c: obj.set_advantages(obj.poly_epo_score, r, c, 4))(rewards, clusters), want)
    want = brute_force_set_advantages(lambda r, c: max(r), rewards, clusters, 4)
    close(obj.get_advantage("pass_at_k")(rewards, clusters, hp(set_size=4)), want)
    with pytest.raises(ValueError, match="set_size"):
        obj.set_advantages(obj.pass_at_k_score, rewards, None, 9)


def test_pass_at_k_analytic_golden():
    # N = 4, k = 2, one correct: Rbar = 1 - C(3,2)/C(4,2) = 1/2, sigma = 1/2;
    # A_pos = (1 - 1/2) / (1/2) = 1; A_neg = (1 - 1/2 - C(2,1)/C(3,1)) / (1/2) = -1/3.
    r = f32([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    a = obj.get_advantage("pass_at_k_analytic")(r, None, hp(k=2))
    close(a[0], [1, -1 / 3, -1 / 3, -1 / 3])
    # One negative, k = 2: every pair holds a positive (Rbar = 1, sigma = 0); all-wrong / all-right too.
    assert np.all(np.asarray(a[1:]) == 0.0)


def test_pass_at_k_analytic_is_normalised_set_advantage():
    rng = np.random.default_rng(1)
    r = f32(rng.integers(0, 2, (6, 8)))
    r[0] = 0
    k = 4
    n_neg = (r == 0).sum(1)
    rbar = 1 - np.array([math.comb(int(j), k) for j in n_neg]) / math.comb(8, k)
    sigma = np.sqrt(rbar * (1 - rbar))[:, None]
    want = brute_force_set_advantages(lambda rr, c: max(rr), r, np.zeros((6, 8)), k) / np.where(sigma > 0, sigma, 1)
    close(obj.pass_at_k_analytic_advantages(r, k), want)


# ----------------------------------------------------------------------------- registry


def test_registry_unknown_names_list_registered():
    with pytest.raises(ValueError, match="dora_clipped.*dora_contrastive.*dora_indicator.*grpo"):
        obj.get_loss("nope")
    with pytest.raises(ValueError, match="poly_epo"):
        obj.get_advantage("nope")
    assert {"grpo", "dora_indicator", "dora_clipped", "dora_contrastive"} <= set(obj.LOSSES)
    assert {"grpo", "dr_grpo", "poly_epo", "pass_at_k", "pass_at_k_analytic"} <= set(obj.ADVANTAGES)


def test_register_new_objectives():
    @obj.register_loss("test_only_loss")
    def mean_logp(logp_BxT, batch, hparams, denoms):
        loss = -obj.agg(logp_BxT, batch["mask_BxT"], "token-mean", denoms)
        return loss, {"loss": loss}

    @obj.register_advantage("test_only_adv")
    def raw(rewards_PxG, clusters_PxG, hparams):
        return rewards_PxG

    try:
        assert obj.get_loss("test_only_loss") is mean_logp
        close(run_loss("test_only_loss", f32([[-1, -3]]), {"mask_BxT": f32([[1, 1]])}, hp())[0], 2.0)
        assert obj.get_advantage("test_only_adv") is raw
    finally:
        obj.LOSSES.pop("test_only_loss")
        obj.ADVANTAGES.pop("test_only_adv")


def test_grpo_diversity_golden():
    # Group: correct with strategy 0 twice, correct with strategy 1 once, one wrong, one correct without strategy.
    rewards = jnp.array([[1.0, 1.0, 1.0, 0.0, 1.0]])
    clusters = jnp.array([[0, 0, 1, 0, -1]])
    hp = {"diversity_bonus": 0.5}
    shaped = np.array([[1 + 0.5 / 2, 1 + 0.5 / 2, 1 + 0.5 / 1, 0.0, 1.0]])
    want = (shaped - shaped.mean()) / (shaped.std(ddof=1) + 1e-6)
    got = obj.get_advantage("grpo_diversity")(rewards, clusters, hp)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0, 2] > got[0, 0] > got[0, 4] > got[0, 3]  # a novel correct strategy earns the most
