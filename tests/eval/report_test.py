"""report.md's header names the hyperparameters of the objective that was trained, and only those."""

from configs import clipped, contrastive, indicator, nora_grpo
from dora_jax.eval import report


def test_the_header_shows_the_psi_temperature_and_clip_range_of_the_losses_that_read_them():
    assert report._dora_hyperparameters(indicator.get_config().objective) == [("beta", 1.0), ("delta", 2.0)]
    assert report._dora_hyperparameters(clipped.get_config().objective) == [("beta", 1.0), ("delta", 2.0)]
    assert report._dora_hyperparameters(contrastive.get_config().objective) == [("beta", 1.0)]  # no clip range
    assert report._dora_hyperparameters(nora_grpo.get_config().objective) == []
