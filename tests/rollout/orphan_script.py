"""A learner that starts its sampler process, waits for one batch, then dies by SIGKILL (process_test)."""

import os
import signal

import jax
import numpy as np

from dora_jax.models import ModelConfig, param_shapes
from dora_jax.rollout.process import ProcessRollouts
from tests.rollout.process_test import _config



def main():
    config = _config()
    config.rollout.prompts_per_step = 64  # batches of ~150 KB: more than a pipe holds, so a writer can block
    model_config = ModelConfig(**config.model)
    source = ProcessRollouts(model_config, config)
    source.publish(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(model_config)), 0)
    source.next_batch(0)
    print(source.process.pid, source.shm.name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":  # the sampler is spawned: it imports this module again, as not-main
    main()
