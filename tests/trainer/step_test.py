"""The update step: Dr.GRPO's normaliser is the response budget, whatever the prompt padding."""

import jax
import numpy as np
import pytest

from configs import common
from dora_jax import models, objectives
from dora_jax.batch import RolloutBatch
from dora_jax.testing import RandomRollouts
from dora_jax.trainer.state import init_state, make_optimizer
from dora_jax.trainer.step import make_update

N = 8  # response budget


def _run(agg: str, extra_prompt_pad: int, loss: str = "grpo"):
    c = common.get_config()
    c.objective.update(loss=loss, agg=agg, group_size=4)
    model_config = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                      num_kv_heads=2, head_dim=8)
    tx = make_optimizer(c.optim, 1)
    state = init_state(models.init_params(model_config, jax.random.key(0)), tx)
    batch, _ = RandomRollouts(seed=3, vocab_size=64, prompts=2, group_size=4, prompt_len=6, response_len=N).next_batch(0)
    # More prompt columns, all padding: the same sequences in a batch whose longest prompt is longer.
    batch = RolloutBatch(*(np.pad(v, ((0, 0), (extra_prompt_pad, 0))) if k.endswith("BxT") else v
                           for k, v in batch._asdict().items()))
    update = jax.jit(make_update(model_config, c.objective, tx, temperature=1.0, grad_accum=1, response_budget=N))
    frozen = {"ref": state.params, "nora": state.params}
    new_state, metrics = update(state, frozen, batch)
    return jax.device_get(metrics), jax.device_get(new_state.params)


@pytest.mark.parametrize("agg", ["seq-mean-token-sum-norm", "token-mean"])
def test_loss_and_gradients_do_not_depend_on_prompt_padding(agg):
    m0, p0 = _run(agg, 0)
    for pad in (10, 64):
        m, p = _run(agg, pad)
        np.testing.assert_allclose(m["loss"], m0["loss"], rtol=1e-5, err_msg=f"prompt padding {pad}")
        np.testing.assert_allclose(m["grad_norm"], m0["grad_norm"], rtol=1e-4, err_msg=f"prompt padding {pad}")
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p0)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert abs(m0["loss"]) > 1e-4  # a loss that is 0 would pass for any normaliser


def test_a_loss_reading_an_undeclared_tree_fails_in_the_update():
    @objectives.register_loss("test_only_reads_ref", uses=())
    def reads_ref(logp_BxT, batch, hp, denoms):
        return objectives.agg(batch["logp_ref_BxT"] - logp_BxT, batch["mask_BxT"], hp.agg, denoms), {}

    try:
        with pytest.raises(KeyError, match="did not declare"):
            _run("token-mean", 0, loss="test_only_reads_ref")
    finally:
        objectives.LOSSES.pop("test_only_reads_ref")
