"""Rollout batches for the trainer: sample a group per prompt, reward it on the host, pack it.

Two `BatchSource`s share one `RolloutMaker` (batch n depends only on (seed, n, params)):

- `InlineRollouts` samples in the learner's process with the parameters the trainer
  publishes after each update, so every batch is on-policy (staleness 0). For Colab.
- `dora_jax.rollout.process.ProcessRollouts` runs the same maker in its own OS process.

Either one's position in the prompt stream is checkpointed with the trainer.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import tqdm

from dora_jax.rollout.sampler import Rollout, sample

VALIDITY_WARNING = 0.8  # warn once when fewer rollouts than this are well-formed (a drifting policy)


def pack_batch(prompt_BxP: np.ndarray, prompt_mask_BxP: np.ndarray, rollout: Rollout, rewards_B: np.ndarray,
               clusters_B: np.ndarray, trained_policy: int | None = None) -> dict[str, np.ndarray]:
    """The trainer's batch: [prompt | response] rows with behaviour log-probs on the response.

    `trained_policy` (handover) masks the loss to the tokens that policy drew.
    """
    resp_mask = np.asarray(rollout.mask_BxN, np.float32)
    if trained_policy is not None:
        resp_mask = resp_mask * (np.asarray(rollout.policy_BxN) == trained_policy)
    B, P = prompt_BxP.shape
    zeros = np.zeros((B, P), np.float32)
    return {
        "tokens_BxT": np.concatenate([prompt_BxP, np.asarray(rollout.tokens_BxN)], axis=1).astype(np.int32),
        "mask_BxT": np.concatenate([prompt_mask_BxP, np.asarray(rollout.mask_BxN)], axis=1).astype(np.int32),
        "response_mask_BxT": np.concatenate([zeros, resp_mask], axis=1),
        # The sampler's log-prob of response token j is the scorer's column P + j.
        "logp_old_BxT": np.concatenate([zeros, np.asarray(rollout.logp_BxN, np.float32)], axis=1),
        "rewards_B": np.asarray(rewards_B, np.float32),
        "clusters_B": np.asarray(clusters_B, np.int32),
    }


def sampling_options(config, task) -> dict:
    """`sample`'s keyword arguments from config.rollout and the task's stop / pad ids (training and eval alike)."""
    r = config.rollout
    return dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                stop_ids=task.stop_ids, pad_id=task.pad_id)


def row_keys(seed: int, position: int, rows: int) -> jax.Array:
    """One PRNG key per row, a function of (seed, batch position) only."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), position), rows)


class RolloutMaker:
    """Batch `position` of the task's RL split: prompts, G samples each, rewards, strategy ids."""

    def __init__(self, task, model_config, config):
        self.task, self.model_config, self.config = task, model_config, config

    def make(self, position: int, params) -> dict:
        """The trainer batch plus "host_metrics" and "samples" (one group as text, every samples_every batches)."""
        c = self.config
        Q, G = c.rollout.prompts_per_step, c.objective.group_size
        problems = self.task.problems("rl", position * Q, Q, c.seed)
        prompt_QxP, mask_QxP = self.task.prompts(problems)
        prompt_BxP, mask_BxP = np.repeat(prompt_QxP, G, axis=0), np.repeat(mask_QxP, G, axis=0)
        rollout = sample(self.model_config, (params,), prompt_BxP, mask_BxP, row_keys(c.seed, position, Q * G),
                         **sampling_options(c, self.task))
        rollout = jax.device_get(rollout)
        rewards_B, valid_B, strategy_B = self.task.score(problems, rollout.tokens_BxN)
        batch = pack_batch(prompt_BxP, mask_BxP, rollout, rewards_B, strategy_B)
        batch["host_metrics"] = {"rollout/valid_frac": float(np.mean(valid_B)),
                                 "rollout/finished_frac": float(np.mean(rollout.finish_B == 0))}
        batch["samples"] = []
        if c.rollout.samples_every and position % c.rollout.samples_every == 0:
            batch["samples"] = [{"step": position + 1, "prompt": self.task.decode(prompt_BxP[g][mask_BxP[g] > 0]),
                                 "response": self.task.decode(rollout.tokens_BxN[g][rollout.mask_BxN[g] > 0]),
                                 "reward": float(rewards_B[g]),
                                 "strategy": self.task.strategy_name(int(strategy_B[g]))} for g in range(G)]
        return batch


class HostSide:
    """What both sources do with a finished batch on the learner: log samples, warn on drift."""

    def __init__(self, samples_path: str | None):
        self.samples_path = samples_path
        self.warned = False

    def receive(self, batch: dict, step: int) -> dict:
        samples = batch.pop("samples", [])
        if self.samples_path and samples:
            with open(self.samples_path, "a") as f:
                f.writelines(json.dumps(s) + "\n" for s in samples)
        valid_frac = batch["host_metrics"]["rollout/valid_frac"]
        if valid_frac < VALIDITY_WARNING and not self.warned:
            self.warned = True
            tqdm.tqdm.write(f"Warning: at step {step} only {valid_frac:.0%} of the rollouts are well-formed answers. The "
                            "policy is drifting off the task; lower config.optim.lr or set config.trainer.stop_kl.")
        return batch


class InlineRollouts:
    """On-policy rollouts sampled in the learner's process with the latest published parameters."""

    def __init__(self, task, model_config, config, samples_path: str | None = None):
        self.maker = RolloutMaker(task, model_config, config)
        self.host = HostSide(samples_path)
        self.position = 0  # batches produced so far
        self.params = None

    def publish(self, params, step: int) -> None:
        del step
        self.params = params

    def next_batch(self, step: int) -> dict[str, np.ndarray]:
        batch = self.maker.make(self.position, self.params)
        self.position += 1
        return self.host.receive(batch, step)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
