"""Rollout batches for the trainer: sample a group per prompt, reward it on the host, pack it.

Two `BatchSource`s share one `RolloutMaker` (batch n depends only on (seed, n, params)):

- `InlineRollouts` samples in the learner's process with the parameters the trainer
  publishes after each update, so every batch is on-policy (staleness 0). For Colab.
- `dora_jax.rollout.process.ProcessRollouts` runs the same maker in its own OS process.

Either one's position in the prompt stream is checkpointed with the trainer.

With `config.rollout.sampler_devices` > 0 the inline sampler owns devices of its own
(`SamplerDevices`): the learner's mesh leaves them out, and each published parameter tree is
copied onto them device to device. In a multi-process run every process samples the same
batch together and process 0 writes samples.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
import tqdm
from jax.sharding import PartitionSpec as P

from dora_jax import distributed
from dora_jax.batch import RolloutBatch
from dora_jax.models.lm import boxed_shapes
from dora_jax.tasks.diversity import make_diversity
from dora_jax.rollout.sampler import Rollout, sample, score
from dora_jax import sharding
from dora_jax.sections import parse, require

@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """The `rollout` config section: how responses are sampled and delivered to the learner."""

    temperature: float = 1.0  # sampling temperature; the scorer divides logits by the same value
    top_p: float = 1.0  # nucleus sampling mass (1 = off; log-probs stay those of the full distribution)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    max_new_tokens: int = 10  # response budget in tokens (the longest Countdown answer is 8 + <eos>)
    prompts_per_step: int = 64  # prompts per update; the batch is prompts_per_step x group_size sequences
    mode: str = "inline"  # the batch source (pipeline.BATCH_SOURCES): inline (in the learner) | process
    sync_every: int = 1  # process mode: updates between parameter pushes to the sampler
    max_staleness: int = 0  # process mode: drop batches sampled more than this many updates ago (0 = on-policy)
    queue_size: int = 2  # process mode: batches the sampler may run ahead
    samples_every: int = 10  # updates between sampled-text dumps to samples.jsonl (one group each)
    handover_window: int = 0  # tokens per policy / Nora window in handover sampling (paper §5.2; 0 = off)
    sampler_devices: int = 0  # devices set aside for sampling, in total over processes (0 = share the learner's)
    sampler_tensor: int = 1  # tensor-parallel width of the sampler's mesh; its other devices split the rows

    def __post_init__(self):
        require(self.temperature > 0, "temperature", self.temperature, "sample at a positive temperature (1 = the policy).")
        require(0 < self.top_p <= 1, "top_p", self.top_p, "use a mass in (0, 1] (1 = off).")
        require(self.top_k >= 0, "top_k", self.top_k, "use 0 (off) or a positive count.")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "allow at least one response token.")
        require(self.prompts_per_step >= 1, "prompts_per_step", self.prompts_per_step, "use at least one prompt.")
        require(self.sync_every >= 1, "sync_every", self.sync_every, "push parameters every 1 or more updates.")
        require(self.max_staleness >= 0, "max_staleness", self.max_staleness, "use 0 (on-policy) or more updates.")
        require(self.max_staleness >= self.sync_every - 1, "max_staleness",
                self.max_staleness, f"parameters pushed every sync_every={self.sync_every} updates are up to "
                "sync_every - 1 updates old: set max_staleness >= sync_every - 1.")
        require(self.queue_size >= 1, "queue_size", self.queue_size, "let the sampler queue at least one batch.")
        require(self.samples_every >= 0, "samples_every", self.samples_every, "use 0 (never) or a number of updates.")
        require(self.handover_window >= 0, "handover_window", self.handover_window, "use 0 (off) or a window in tokens.")
        require(self.sampler_devices >= 0 and self.sampler_tensor >= 1, "sampler_devices",
                (self.sampler_devices, self.sampler_tensor), "use sampler_devices >= 0 and sampler_tensor >= 1.")


VALIDITY_WARNING = 0.8  # warn once when the well-formed share falls below this fraction of the first batch's


@dataclasses.dataclass
class MadeBatch:
    """A batch as its maker hands it over: the learner's part and what stays on the host."""

    batch: RolloutBatch
    host_metrics: dict[str, float]  # e.g. rollout/valid_frac, written with the update's metrics
    samples: list[dict]  # one group as text, every rollout.samples_every batches (samples.jsonl)
    version: int = -1  # process mode: the parameter version it was sampled with


def pack_batch(prompt_BxP: np.ndarray, prompt_mask_BxP: np.ndarray, rollout: Rollout, rewards_B: np.ndarray,
               clusters_B: np.ndarray, trained_policy: int | None = None) -> RolloutBatch:
    """The trainer's batch: [prompt | response] rows with behaviour log-probs on the response.

    `trained_policy` (handover) masks the loss to the tokens that policy drew.
    """
    resp_mask = np.asarray(rollout.mask_BxN, np.float32)
    if trained_policy is not None:
        resp_mask = resp_mask * (np.asarray(rollout.policy_BxN) == trained_policy)
    B, P = prompt_BxP.shape
    zeros = np.zeros((B, P), np.float32)
    return RolloutBatch(
        tokens_BxT=np.concatenate([prompt_BxP, np.asarray(rollout.tokens_BxN)], axis=1).astype(np.int32),
        mask_BxT=np.concatenate([prompt_mask_BxP, np.asarray(rollout.mask_BxN)], axis=1).astype(np.int32),
        response_mask_BxT=np.concatenate([zeros, resp_mask], axis=1),
        # The sampler's log-prob of response token j is the scorer's column P + j.
        logp_old_BxT=np.concatenate([zeros, np.asarray(rollout.logp_BxN, np.float32)], axis=1),
        rewards_B=np.asarray(rewards_B, np.float32),
        clusters_B=np.asarray(clusters_B, np.int32),
    )


def sampling_options(r: RolloutConfig, task) -> dict:
    """`sample`'s keyword arguments from the rollout section and the task's stop / pad ids (training and eval)."""
    return dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                stop_ids=task.stop_ids, pad_id=task.pad_id)


def row_keys(seed: int, position: int, rows: int) -> jax.Array:
    """One PRNG key per row, a function of (seed, batch position) only."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), position), rows)


class SamplerDevices:
    """A mesh of devices only the sampler uses: rows split over its `data` axis, parameters laid
    out by the config's rules (replicated unless `rollout.sampler_tensor` > 1)."""

    def __init__(self, model_config, config, devices):
        tensor = parse(RolloutConfig, config.rollout, "rollout").sampler_tensor
        model_config.check_tensor_parallel(tensor, "config.rollout.sampler_tensor")
        mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": tensor}, devices)
        rules = tuple(tuple(r) for r in config.mesh.rules)
        self.param_shardings = sharding.tree_shardings(boxed_shapes(model_config), mesh, rules)

    def put(self, params):
        """The learner's parameters on the sampler's devices, copied device to device (never through the host)."""
        if jax.process_count() == 1:
            return jax.device_put(params, self.param_shardings)
        # jax cannot device_put between disjoint device sets that span processes, so gather the
        # tree on the learner's devices, then let each process copy its replica to its own sampler devices.
        full = jax.jit(lambda t: t, out_shardings=jax.tree.map(lambda x: x.sharding.update(spec=P()), params))(params)
        return jax.tree.map(_copy_local_replica, full, self.param_shardings)


def _copy_local_replica(full: jax.Array, target) -> jax.Array:
    replica = full.addressable_data(0)
    shards = [jax.device_put(replica[index], device)
              for device, index in target.addressable_devices_indices_map(full.shape).items()]
    return jax.make_array_from_single_device_arrays(full.shape, target, shards)


def samples_nora(config) -> bool:
    """Whether the rollouts sample Nora too: handover, the complementarity reward or Nora-guided groups."""
    o = config.objective
    return bool(config.rollout.handover_window or o.get("nora_samples")
                or (o.get("guide") and o.get("guide_from", "nora") == "nora"))


def samples_ref(config) -> bool:
    """Whether the rollouts sample Ref too: Ref-guided groups."""
    return bool(config.objective.get("guide") and config.objective.get("guide_from", "nora") == "ref")


class RolloutMaker:
    """Batch `position` of the task's RL split: prompts, G samples each, rewards, strategy ids."""

    def __init__(self, task, model_config, config, nora_params=None, ref_params=None):
        self.task, self.model_config, self.config = task, model_config, config
        self.rollout = parse(RolloutConfig, config.rollout, "rollout")
        self.rules = tuple(tuple(r) for r in config.mesh.rules)  # how rows and activations lie on the params' mesh
        # Handover (paper §5.2): windows of w tokens alternate between the policy and Nora; it learns on its own.
        self.handover_window = self.rollout.handover_window
        # The complementarity reward (objective.nora_samples, checked with the objective section).
        self.nora_samples = int(config.objective.get("nora_samples", 0))
        self.nora_reward_by = config.objective.get("nora_reward_by", "problem")
        self.nora_reward_weight = float(config.objective.get("nora_reward_weight", 1.0))
        # Strategies whose responses the complementarity reward leaves whole (objective.spare_rare).
        self.spared = tuple(task.rare_strategies) if config.objective.get("spare_rare") else ()
        # Guided groups: up to `guide` rows per group become correct samples of Nora's or Ref's (guide_from).
        self.guide = int(config.objective.get("guide", 0))
        self.guide_from = config.objective.get("guide_from", "nora")
        if samples_nora(config) and nora_params is None:
            setting = (f"config.rollout.handover_window={self.handover_window}" if self.handover_window
                       else f"config.objective.nora_samples={self.nora_samples}")
            raise ValueError(f"{setting} samples Nora, but the sampler has no Nora parameters; set config.nora_dir "
                             "(or set it to 0 to sample the policy alone).")
        if samples_ref(config) and ref_params is None:
            raise ValueError("config.objective.guide_from='ref' samples Ref, but the sampler has no Ref parameters; "
                             "set config.ref_dir (or guide_from='nora').")
        self.nora_params, self.ref_params = nora_params, ref_params
        self.diversity = make_diversity(config.diversity)
        # Functions that read the responses (embedding, LLM judge) get them decoded; task labels do not.
        self.reads_text = getattr(self.diversity, "reads_text", True)

    def make(self, position: int, params) -> MadeBatch:
        """Batch `position`, sampled with `params`, with its host metrics and text samples."""
        c, r = self.config, self.rollout
        Q, G = r.prompts_per_step, c.objective.group_size
        problems = self.task.problems("rl", position * Q, Q, c.seed)
        prompt_QxP, mask_QxP = self.task.prompts(problems)
        prompt_BxP, mask_BxP = np.repeat(prompt_QxP, G, axis=0), np.repeat(mask_QxP, G, axis=0)
        policies = (params, self.nora_params) if self.handover_window else (params,)
        start = time.perf_counter()
        rollout = sample(self.model_config, policies, prompt_BxP, mask_BxP, row_keys(c.seed, position, Q * G),
                         handover_window=self.handover_window, rules=self.rules, group=G,
                         **sampling_options(r, self.task))
        rollout = jax.device_get(rollout)
        sampled = time.perf_counter()
        rewards_B, valid_B, strategy_B = self.task.score(problems, rollout.tokens_BxN)
        new_tokens = float(np.sum(rollout.mask_BxN))
        perf = {"perf/sample_s": sampled - start, "perf/sample_tokens_per_s": new_tokens / max(sampled - start, 1e-9)}
        # What the policy itself draws, before guided rows replace any of it.
        host_metrics = {"rollout/valid_frac": float(np.mean(valid_B)),
                        "rollout/finished_frac": float(np.mean(rollout.finish_B == 0))}
        for i, name in enumerate(self.task.strategy_names):  # what the policy explores, update by update
            host_metrics[f"rollout/strategy/{name}"] = float(np.mean(strategy_B == i))
        cluster_QxG, guided_B = None, np.zeros(len(prompt_BxP), bool)
        nora = self._sample_nora(problems, prompt_QxP, mask_QxP, position) if self.nora_samples else None
        if self.guide:
            guide = nora if self.guide_from == "nora" else self._draw(
                self.ref_params, problems, prompt_QxP, mask_QxP, position, G, self.config.seed + 50_000)
            rollout, rewards_B, strategy_B, guided_B = self._guide(params, prompt_BxP, mask_BxP, rollout, rewards_B,
                                                                   strategy_B, *guide)
            host_metrics["rollout/guided_frac"] = float(np.mean(guided_B))
        if self.nora_samples:
            rewards_B, nora_metrics, cluster_QxG = self._complement(prompt_QxP, mask_QxP, rollout, rewards_B,
                                                                    strategy_B, *nora)
            host_metrics.update(nora_metrics)
        perf["perf/reward_s"] = time.perf_counter() - sampled
        if cluster_QxG is None:  # (the per-strategy reward has already clustered them, jointly with Nora's)
            cluster_QxG = self._clusters(prompt_QxP, mask_QxP, _responses(rollout), np.reshape(strategy_B, (Q, G)))
        clusters_B = cluster_QxG.reshape(-1)
        batch = pack_batch(prompt_BxP, mask_BxP, rollout, rewards_B, clusters_B,
                           trained_policy=0 if self.handover_window else None)
        host_metrics.update(perf)
        if self.reads_text:
            host_metrics["diversity/fallbacks"] = float(self.diversity.stats.get("fallbacks", 0))
        if self.handover_window:
            host_metrics["handover/policy_token_frac"] = float(
                np.sum(batch.response_mask_BxT) / max(np.sum(rollout.mask_BxN), 1))
        samples = []
        if r.samples_every and position % r.samples_every == 0:
            samples = [{"step": position + 1, "prompt": self.task.decode(prompt_BxP[g][mask_BxP[g] > 0]),
                        "response": self.task.decode(rollout.tokens_BxN[g][rollout.mask_BxN[g] > 0]),
                        "reward": float(rewards_B[g]),
                        "strategy": self.task.strategy_name(int(strategy_B[g])),
                        **({"guided": bool(guided_B[g])} if self.guide else {})} for g in range(G)]
        return MadeBatch(batch, host_metrics, samples)


    def _sample_nora(self, problems, prompt_QxP, mask_QxP, position: int) -> tuple[Rollout, np.ndarray, np.ndarray]:
        """objective.nora_samples samples of Nora per prompt (keys of their own), with their rewards and strategies."""
        return self._draw(self.nora_params, problems, prompt_QxP, mask_QxP, position, self.nora_samples,
                          self.config.seed + 40_000)

    def _draw(self, params, problems, prompt_QxP, mask_QxP, position: int, K: int, seed: int):
        """K samples per prompt of a frozen policy, from keys of `seed`, with their rewards and strategies."""
        drawn = jax.device_get(sample(
            self.model_config, (params,), np.repeat(prompt_QxP, K, axis=0), np.repeat(mask_QxP, K, axis=0),
            row_keys(seed, position, len(problems) * K), rules=self.rules, group=K,
            **sampling_options(self.rollout, self.task)))
        rewards, _, strategy = self.task.score(problems, drawn.tokens_BxN)
        return drawn, np.asarray(rewards), np.asarray(strategy)

    def _guide(self, params, prompt_BxP, mask_BxP, rollout: Rollout, rewards_B: np.ndarray, strategy_B: np.ndarray,
               guide: Rollout, guide_rewards: np.ndarray, guide_strategy: np.ndarray):
        """Guided groups (objective.guide = m): the last rows of each group become the guide's (Nora's or Ref's)
        correct samples of its prompt, as many as it drew up to m, first drawn first, with their rewards and
        strategies. Their behaviour log-probs are the policy's own (`score`), so the update treats them as if the
        policy had drawn them: no importance correction, ratio 1. Returns the rollout, rewards, strategies and
        which rows were replaced [B] (bool)."""
        G, m = self.config.objective.group_size, self.guide
        K = len(guide_rewards) * G // len(rewards_B)
        rows, hers = [], []
        for q, correct in enumerate(np.asarray(guide_rewards).reshape(-1, K) > 0):
            picked = np.flatnonzero(correct)[:m]
            rows += [q * G + G - 1 - j for j in range(len(picked))]
            hers += [q * K + k for k in picked]
        guided_B = np.zeros(len(rewards_B), bool)
        guided_B[rows] = True
        if not rows:
            return rollout, rewards_B, strategy_B, guided_B
        out = {name: np.array(getattr(rollout, name)) for name in rollout._fields}
        for name in ("tokens_BxN", "mask_BxN", "lengths_B", "finish_B"):
            out[name][rows] = np.asarray(getattr(guide, name))[hers]
        logp_BxN = score(self.model_config, params, prompt_BxP, mask_BxP, out["tokens_BxN"], out["mask_BxN"],
                         temperature=self.rollout.temperature, rules=self.rules)
        out["logp_BxN"][rows] = logp_BxN[rows]
        rewards_B, strategy_B = np.array(rewards_B, np.float32), np.array(strategy_B)
        rewards_B[rows], strategy_B[rows] = guide_rewards[hers], guide_strategy[hers]
        return Rollout(**out), rewards_B, strategy_B, guided_B

    def _complement(self, prompt_QxP, mask_QxP, rollout: Rollout, rewards_B: np.ndarray, strategy_B: np.ndarray,
                    nora: Rollout, nora_rewards: np.ndarray, nora_strategy: np.ndarray):
        """The complementarity reward, from Nora's objective.nora_samples samples per prompt (`_sample_nora`).

        nora_reward_by "problem": each reward times (1 - Nora's success rate on its problem); a problem she
        already solves is worth little to her explorer. "strategy": each reward times (1 - the share of her
        samples that are correct *and* in the response's own strategy cluster, clustered jointly with hers by
        config.diversity); a correct answer by a strategy Nora does not use keeps its full reward everywhere.
        "modes": each reward times (1 - the share of her correct samples, over the whole batch, in the
        response's labelled strategy; unlabelled answers, -1, count as one more strategy): her modes are
        discounted everywhere by how much of what she solves they carry, and a strategy she solves a few problems
        with keeps most of its reward even on those.
        objective.nora_reward_weight (lambda) scales what is taken off: r x (1 - lambda x her share); with
        objective.spare_rare nothing is taken off responses in the task's rare strategies. Returns the
        shaped rewards, metrics, and in "strategy" mode the policy's cluster ids [Q, G] from that joint
        clustering (the advantage's clusters too, so they are computed once), else None."""
        K = self.nora_samples
        Q, G = len(prompt_QxP), len(rewards_B) // len(prompt_QxP)
        correct_QxK = (np.asarray(nora_rewards) > 0).reshape(Q, K)
        mine_QxG = None  # the policy's clusters, from the per-strategy form's joint clustering
        if self.nora_reward_by == "strategy":
            mine, hers = _responses(rollout), _responses(nora)
            joint = [x for q in range(Q) for x in mine[q * G:(q + 1) * G] + hers[q * K:(q + 1) * K]]
            strategy_QxJ = np.concatenate([np.reshape(strategy_B, (Q, G)), np.reshape(nora_strategy, (Q, K))], 1)
            cluster_QxJ = self._clusters(prompt_QxP, mask_QxP, joint, strategy_QxJ)
            same_QxGxK = cluster_QxJ[:, :G, None] == cluster_QxJ[:, None, G:]
            covered_QxG = np.mean(same_QxGxK & correct_QxK[:, None, :], axis=-1)
            mine_QxG = cluster_QxJ[:, :G]
        elif self.nora_reward_by == "modes":
            hers_C = np.asarray(nora_strategy)[correct_QxK.reshape(-1)]  # the strategies of her C correct samples
            same_BxC = np.asarray(strategy_B)[:, None] == hers_C[None, :]
            covered_QxG = (same_BxC.sum(axis=1) / max(hers_C.size, 1)).reshape(Q, G)
        else:
            covered_QxG = np.repeat(correct_QxK.mean(axis=1, keepdims=True), G, axis=1)
        covered_B = np.where(np.isin(strategy_B, self.spared), 0.0, covered_QxG.reshape(-1))
        shaped_B = np.asarray(rewards_B, np.float32) * (1.0 - self.nora_reward_weight * covered_B)
        return shaped_B, {"rollout/nora_success": float(correct_QxK.mean()),
                          "rollout/reward_before_complement": float(np.mean(rewards_B))}, mine_QxG

    def _clusters(self, prompt_QxP, mask_QxP, responses: list, strategy_QxJ: np.ndarray) -> np.ndarray:
        """Strategy cluster ids [Q, J] of each prompt's J responses (token arrays, prompt by prompt) from the
        configured diversity function."""
        Q, J = strategy_QxJ.shape
        decode = self.task.decode if self.reads_text else (lambda ids: "")
        prompts = [decode(p[m > 0]) for p, m in zip(prompt_QxP, mask_QxP)]
        texts = [decode(t) for t in responses]
        groups = [texts[q * J:(q + 1) * J] for q in range(Q)]
        return np.asarray(self.diversity(prompts, groups, strategy_QxJ), np.int32)


def _responses(rollout: Rollout) -> list[np.ndarray]:
    """Each row's emitted tokens."""
    return [t[m > 0] for t, m in zip(rollout.tokens_BxN, rollout.mask_BxN)]


class HostSide:
    """What both sources do with a finished batch on the learner: log samples, warn on drift."""

    def __init__(self, samples_path: str | None):
        # Every process holds the same batch: process 0 speaks for all.
        self.samples_path = samples_path if distributed.is_chief() else None
        self.warned = not distributed.is_chief()
        self.first_valid: float | None = None  # the first batch's well-formed share (this process's run)

    def receive(self, made: MadeBatch, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        if self.samples_path and made.samples:
            with open(self.samples_path, "a") as f:
                f.writelines(json.dumps(s) + "\n" for s in made.samples)
        valid_frac = made.host_metrics["rollout/valid_frac"]
        if self.first_valid is None:  # the starting policy's own rate: a base model may be far from 100%
            self.first_valid = valid_frac
        elif valid_frac < VALIDITY_WARNING * self.first_valid and not self.warned:
            self.warned = True
            tqdm.tqdm.write(f"Warning: at step {step} {valid_frac:.0%} of the rollouts are well-formed answers, down from "
                            f"{self.first_valid:.0%} in the first batch. The policy is drifting off the task; lower "
                            "config.optim.lr or set config.trainer.stop_kl.")
        return made.batch, made.host_metrics


class InlineRollouts:
    """On-policy rollouts sampled in the learner's process with the latest published parameters."""

    def __init__(self, task, model_config, config, samples_path: str | None = None, devices=None, nora_params=None,
                 ref_params=None):
        """`devices`: the run's devices, as given to the `Trainer` (default: every process's).

        `nora_params` / `ref_params`: the frozen trees the rollouts also sample (`samples_nora`, `samples_ref`).
        """
        own = sharding.split_devices(config, devices)[1]
        self.devices = SamplerDevices(model_config, config, own) if own else None
        if self.devices is not None:
            nora_params, ref_params = (None if p is None else self.devices.put(p) for p in (nora_params, ref_params))
        self.maker = RolloutMaker(task, model_config, config, nora_params, ref_params)
        self.host = HostSide(samples_path)
        self.position = 0  # batches produced so far
        self.params = None

    def publish(self, params, step: int) -> None:
        del step
        self.params = params if self.devices is None else self.devices.put(params)

    def next_batch(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        made = self.maker.make(self.position, self.params)
        self.position += 1
        return self.host.receive(made, step)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
