"""The whole pipeline in its smoke variants: embedded (ref SFT -> Nora GRPO -> Dora -> eval -> report) and real math."""

import copy
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np

import pytest

from configs import clipped, common, distill, indicator, nora_grpo, polyepo
from dora_jax import experiments, objectives, pipeline
from dora_jax.sections import ConfigError
from dora_jax.tasks.countdown import problems as countdown
from tests import math_world, xla_flags
from tests.writers_test import read_events


def _smoke(module, tmp_path, arg="smoke"):
    c = module.get_config(arg)
    c.cache_dir = str(tmp_path / "cache")
    for built in c.build.values():
        built.cache_dir = c.cache_dir
    return c


def test_indicator_pipeline_writes_the_workdir_and_reuses_the_cache(tmp_path, capsys):
    workdir = tmp_path / "indicator"
    summary = pipeline.run(_smoke(indicator, tmp_path), str(workdir))
    out = capsys.readouterr().out
    assert "building it into" in out  # ref and Nora were missing
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "eval.json", "report.md", "checkpoints",
                 "policy", "figures/eval_accuracy.png", "figures/critic_score.png", "figures/kl_dora_nora.png",
                 "figures/psi_mean.png", "figures/pass_at_k.png", "figures/strategies.png"):
        assert (workdir / name).exists(), name
    assert set(summary["policies"]) == {"ref", "nora", "dora"}
    assert set(summary["mixtures"]) == {"dora+nora", "dora+ref", "nora+ref"}
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in records] == list(range(5))  # step 0: the initial evaluation
    for key in ("reward/mean", "kl/policy_nora_token", "kl/policy_nora_seq", "psi/mean", "indicator/frac", "entropy",
                "response_length/mean", "perf/tokens_per_s", "perf/step_s"):
        assert all(key in r for r in records[1:]), key
    assert "eval/accuracy" in records[0] and "eval/accuracy" in records[-1]
    events = read_events(str(workdir / "tensorboard"))  # the curves and figures, also for TensorBoard
    assert [s for s, _ in events["eval/accuracy"]] == [r["step"] for r in records if "eval/accuracy" in r]
    assert [s for s, _ in events["figures/pass_at_k"]] == [4]
    samples = [json.loads(line) for line in open(workdir / "samples.jsonl")]  # the sampled text, per step
    assert [s for s, _ in events["samples/text_summary"]] == sorted({s["step"] for s in samples})
    assert samples[0]["response"].replace("|", "\\|") in events["samples/text_summary"][0][1]
    report = (workdir / "report.md").read_text()
    assert "Table 1" in report and "Table 2" in report and "Nora+Ref" in report

    # A second run with the same config reuses both built policies.
    pipeline.run(_smoke(indicator, tmp_path), str(tmp_path / "again"))
    out = capsys.readouterr().out
    assert out.count("Using the cached") == 2 and "building it into" not in out


@pytest.fixture
def shared(build_cache):
    """The directory whose cache/ holds the session's built smoke policies (tests/conftest.py)."""
    return build_cache.parent


def test_a_workdir_resumes_only_the_run_it_holds(shared, tmp_path):
    workdir = tmp_path / "run"
    c = _smoke(indicator, shared)
    c.trainer.num_steps = 2
    pipeline.run(c, str(workdir))
    saved = (workdir / "config.json").read_text()
    other = copy.deepcopy(c)
    other.objective = common.objective("dora_clipped", keep=c.objective)  # same shapes, another loss
    with pytest.raises(ConfigError, match=r"another config \(objective\.loss: 'dora_indicator' -> 'dora_clipped'\)"):
        pipeline.run(other, str(workdir))  # credit, absent before, is at its default: not a change
    assert (workdir / "config.json").read_text() == saved
    # A run saved before a field existed resumes while the field keeps its default, and only then.
    older = json.loads(saved)
    del older["task"]["validation_problems"]
    (workdir / "config.json").write_text(json.dumps(older))
    held_out = copy.deepcopy(c)
    held_out.task.validation_problems = 30
    with pytest.raises(ConfigError, match=r"task\.validation_problems: '\(absent\)' -> 30"):
        pipeline.run(held_out, str(workdir))
    longer = copy.deepcopy(c)
    longer.trainer.num_steps = 3  # training on is a resume
    pipeline.run(longer, str(workdir))
    assert [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")] == [0, 1, 2, 3]


@pytest.mark.slow
def test_an_improved_variant_trains_alongside_on_the_same_ref_and_nora(shared, tmp_path):
    c = _smoke(indicator, shared)
    c.alongside.improved = _smoke(indicator, shared, "smoke,from_ref,complement,nora_reward")
    workdir = tmp_path / "main"
    summary = pipeline.run(c, str(workdir))
    side = summary["alongside"]["improved"]
    assert (workdir / "alongside" / "improved" / "eval.json").exists()
    assert side["policies"]["ref"] == summary["policies"]["ref"]  # the same Ref, evaluated with the same keys
    assert side["policies"]["nora"] == summary["policies"]["nora"]
    report = (workdir / "report.md").read_text()
    assert "## Side by side, seed 0" in report and "| improved |" in report
    assert ("forgotten" in summary) == ("## Forgotten strategies" in report)
    records = _lines(workdir / "alongside" / "improved" / "metrics.jsonl")[1:]
    # What the diagnosis reads: the rollouts' strategies, and where the weight acts.
    assert all("rollout/strategy/sum" in r and "objective/weight_above" in r for r in records)
    # The complementarity reward: Nora sampled on each prompt, rewards scaled by her failure rate there.
    assert all(0 <= r["rollout/nora_success"] <= 1 and r["reward/mean"] <= r["rollout/reward_before_complement"] + 1e-6
               for r in records)
    for run in (workdir, workdir / "alongside" / "improved"):  # launch/diagnose.py's table, also of a
        table = experiments.gate_by_token_kind(str(run), batches=1)  # run that sampled Nora for its rewards
        assert set(table) == {"nora", "trained"}
        assert set(table["nora"]) == {"operator", "parenthesis", "number", "end"}
        for kinds in table.values():
            assert 0.5 < sum(e["tokens"] for e in kinds.values()) <= 1 + 1e-6
            assert sum(e["gated_share"] for e in kinds.values()) <= 1 + 1e-6
    main, other = (json.loads((d / "config.json").read_text()) for d in (workdir, workdir / "alongside" / "improved"))
    assert (other["ref_dir"], other["nora_dir"], other["policy_init"]) == (main["ref_dir"], main["nora_dir"], "ref")


def test_clipped_trains_dora(shared, tmp_path):
    workdir = tmp_path / "clipped"
    pipeline.run(_smoke(clipped, shared), str(workdir))
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")][1:]
    assert all(r["grad_norm"] > 0 and r["update_norm"] > 0 for r in records)
    assert np.isfinite([r["objective/clip_frac_low"] for r in records]).all()
    assert os.path.exists(workdir / "report.md")


def _math(module, world, workdir, steps, **overrides):
    c = module.get_config("math,smoke")
    c.update_from_flattened_dict({"ref_dir": world["model"], "task.train_data": world["train"],
                                  "task.eval_data": world["eval"], "trainer.num_steps": steps,
                                  "rollout.samples_every": 1, **overrides})
    return pipeline.run(c, str(workdir))


def _lines(path, skip_perf=True):
    return [{k: v for k, v in json.loads(line).items() if not (skip_perf and k.startswith("perf/"))}
            for line in open(path)]


@pytest.mark.slow
def test_math_grpo_then_dora_then_eval_on_files(tmp_path):
    """Real math end to end on a tiny local Qwen2 + BPE tokenizer: GRPO (Nora), Dora, launch/eval.py."""
    world = math_world.write(str(tmp_path / "world"))
    summary = _math(nora_grpo, world, tmp_path / "nora", 3)
    assert set(summary["policies"]) == {"ref", "nora"} and summary["num_problems"] == 5
    report = (tmp_path / "nora" / "report.md").read_text()
    assert "Table 2" in report and "Strategy diversity" not in report  # math has no strategy labels
    samples = _lines(tmp_path / "nora" / "samples.jsonl")
    assert samples[0]["prompt"].startswith("<|im_start|>user\nWhat is") and samples[0]["strategy"] == "unlabelled"

    # Resume mid-epoch (20 rows, 2 prompts per step): stop after 2 updates, restart, and read the same 3rd batch.
    _math(nora_grpo, world, tmp_path / "cut", 2)
    _math(nora_grpo, world, tmp_path / "cut", 3)
    assert _lines(tmp_path / "cut" / "metrics.jsonl") == _lines(tmp_path / "nora" / "metrics.jsonl")
    assert _lines(tmp_path / "cut" / "samples.jsonl") == samples

    dora = _math(indicator, world, tmp_path / "dora", 1, nora_dir=str(tmp_path / "nora" / "policy"))
    assert set(dora["mixtures"]) == {"dora+nora", "dora+ref", "nora+ref"}
    records = _lines(tmp_path / "dora" / "metrics.jsonl")
    assert records[-1]["step"] == 1 and np.isfinite(records[-1]["kl/policy_nora_token"])

    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "launch/eval.py", "--config=configs/indicator.py:math,smoke", f"--out={out}",
         f"--config.task.eval_data={world['eval']}",  # no training file: an evaluation never reads it
         f"--policy=ref={world['model']}", f"--policy=dora={tmp_path / 'dora' / 'policy'}"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "passk.md").read_text()
    assert "| policy | k=1 | k=2 | k=4 |" in table and "| Dora+Ref |" in table
    assert json.loads((out / "eval.json").read_text())["num_problems"] == 5


@pytest.mark.parametrize("variant", ["smoke", "pass_at_k,smoke", "grpo_diversity,smoke"])
def test_set_rl_trains_from_ref_with_the_shared_trainer(shared, tmp_path, variant, monkeypatch):
    c = _smoke(polyepo, shared, variant)
    # Record what the configured set advantage receives and returns inside the jitted update.
    name, seen = c.objective.advantage, []
    advantage = objectives.ADVANTAGES[name]

    def spy(rewards_PxG, clusters_PxG, hp):
        out = advantage(rewards_PxG, clusters_PxG, hp)
        jax.debug.callback(lambda *xs: seen.append([np.asarray(x) for x in xs]), rewards_PxG, clusters_PxG, out)
        return out

    spy.uses, spy.reads = advantage.uses, advantage.reads  # what a registered advantage carries
    monkeypatch.setitem(objectives.ADVANTAGES, name, spy)
    summary = pipeline.run(c, str(tmp_path / c.name))
    assert set(summary["policies"]) == {"ref", "nora", c.name}
    records = [json.loads(line) for line in open(tmp_path / c.name / "metrics.jsonl")][1:]
    # The smoke Ref rarely solves a problem, so advantages may be 0; the run must still go through the
    # shared sampler -> scorer (Nora included, for the KL) -> update path and log every metric.
    assert len(records) == 4 and all(np.isfinite([r["kl/policy_nora_token"], r["advantage/abs_mean"], r["loss"]]).all()
                                     for r in records)
    # Every update used the configured advantage on its batch's rewards and strategy labels (Countdown's
    # templates, -1 for none), and logged it.
    assert len(seen) == len(records)
    for (rewards, clusters, adv), record in zip(seen, records):
        assert rewards.shape == clusters.shape == adv.shape == (c.rollout.prompts_per_step, c.objective.group_size)
        assert clusters.min() >= -1 and clusters.max() < len(countdown.TEMPLATES)
        assert np.mean(np.abs(adv)) == pytest.approx(record["advantage/abs_mean"], abs=1e-6)


def test_handover_trains_dora_on_her_own_windows(shared, tmp_path):
    summary = pipeline.run(_smoke(indicator, shared, "handover,smoke"), str(tmp_path / "handover"))
    assert "dora+nora" in summary["mixtures"]
    records = [json.loads(line) for line in open(tmp_path / "handover" / "metrics.jsonl")][1:]
    # Windows of 2 tokens alternate from Dora: she draws about half of every response's tokens.
    assert all(0.4 < r["handover/policy_token_frac"] < 0.7 for r in records)


def test_distill_fine_tunes_nora_on_doras_correct_samples(shared, tmp_path, monkeypatch):
    # The smoke Dora solves nothing, so the STaR filter (tests/data/distill_test.py) would keep nothing:
    # stand in the task's own solutions for her correct samples and check the rest of the pipeline.
    calls = []

    def corpus(evaluator, problems, dora, nora, cfg, seed):
        calls.append((len(problems), cfg.samples_per_problem))
        return evaluator.task.sft_examples(seed)

    monkeypatch.setattr(pipeline, "distill_corpus", corpus)
    c = _smoke(distill, shared, "smoke")
    summary = pipeline.run(c, str(tmp_path / "distill"))
    assert calls and calls[0][0] > 0
    assert set(summary["policies"]) == {"ref", "nora", "dora", "distill"}
    assert "distill+nora" in summary["mixtures"] and "dora+nora" in summary["mixtures"]
    assert "Nora-distilled" in (tmp_path / "distill" / "report.md").read_text()


def test_compare_writes_one_table_and_plot(shared, tmp_path):
    out = tmp_path / "compare"
    configs = {"indicator": indicator.get_config("smoke"), "polyepo": polyepo.get_config("smoke")}
    summaries = experiments.compare(configs, [0], str(out),
                                 {"cache_dir": str(shared / "cache"), "eval.samples": 8})
    assert set(summaries) == {"indicator", "polyepo"}
    table = (out / "compare.md").read_text()
    for row in ("| Ref (SFT) |", "| Nora (GRPO) |", "| indicator |", "| polyepo |"):
        assert row in table
    assert re.search(r"\| indicator \| 0\.\d{3} \| 0\.\d{3} \|", table)  # measured pass@1 and pass@8
    assert (out / "figures" / "compare_pass_at_k.png").exists()


@pytest.mark.slow
def test_smollm_grpo_then_dora_on_the_packaged_model(build_cache, tmp_path):
    """The real pretrained model end to end: SmolLM2-135M-Instruct from its package's GGUF, one GRPO update
    (Nora), one Dora update, evaluation of Ref / Nora / Dora on generated word problems."""
    # As a user runs it: in a process of its own, on one CPU device (the suite's 8 simulated devices would each
    # hold copies of the 135M-parameter trees), so its memory is returned at its exit.
    result = subprocess.run(
        [sys.executable, "launch/train.py", "--config=configs/indicator.py:smollm,smoke",
         f"--workdir={tmp_path / 'dora'}", f"--config.cache_dir={build_cache}"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=1200,
        env={**os.environ, "XLA_FLAGS": xla_flags(1, optimise=True)})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "dora" / "eval.json").read_text())
    assert set(summary["policies"]) == {"ref", "nora", "dora"} and summary["num_problems"] == 2
    assert len(summary["noise"]["pass@1"]) == 2 and summary["time_split"]["update_s"] > 0
    converted = [p.name for p in (build_cache / "models").iterdir() if p.is_dir()]  # besides the lock file
    assert len(converted) == 1 and converted[0].startswith("SmolLM2-135M-Instruct")  # here or by gguf_test.py
    record = _lines(tmp_path / "dora" / "metrics.jsonl", skip_perf=False)[-1]
    assert record["step"] == 1 and np.isfinite(record["kl/policy_nora_token"])
    assert record["perf/sample_s"] > 0 and record["perf/update_s"] > 0 and record["perf/update_tokens_per_s"] > 0
    sample = _lines(tmp_path / "dora" / "samples.jsonl")[0]
    assert sample["prompt"].startswith("<|im_start|>system\nSolve the problem")  # the model's own chat template
    assert "Ann has 3 + 4 = 7 pens" in sample["prompt"]  # the worked example turn
    assert "Ref" in (tmp_path / "dora" / "report.md").read_text()


def test_the_complementarity_reward_survives_every_variant_it_combines_with():
    for variants in ("from_ref,grpo,nora_reward", "from_ref,grpo,nora_reward,pass_at_k", "complement,nora_reward",
                     "sequence,nora_reward,signed", "from_ref,grpo,poly_epo,nora_reward"):
        objective = indicator.get_config(variants).objective
        assert (objective.nora_samples, objective.nora_reward_weight) == (8, 1.0), variants
    assert indicator.get_config("from_ref,grpo,poly_epo,nora_reward").objective.advantage == "poly_epo"
    with pytest.raises(ValueError, match="one of the set advantages"):
        indicator.get_config("from_ref,grpo,poly_epo,pass_at_k")
    assert "nora_samples" not in indicator.get_config("from_ref,grpo").objective
    by_strategy = indicator.get_config("from_ref,grpo,nora_strategy_reward,pass_at_k").objective
    assert (by_strategy.nora_samples, by_strategy.nora_reward_by) == (8, "strategy")
    by_mode = indicator.get_config("from_ref,grpo,poly_epo,nora_mode_reward").objective
    assert (by_mode.nora_samples, by_mode.nora_reward_by, by_mode.advantage) == (8, "modes", "poly_epo")
    with pytest.raises(ValueError, match="one of the complementarity rewards"):
        indicator.get_config("from_ref,grpo,nora_reward,nora_strategy_reward")
    guided = indicator.get_config("from_ref,grpo,poly_epo,nora_guide").objective  # her samples, rewards unshaped
    assert (guided.guide, guided.guide_from, guided.nora_samples, guided.nora_reward_weight) == (2, "nora", 8, 0.0)
    guided = indicator.get_config("from_ref,grpo,nora_reward,nora_guide").objective
    assert (guided.guide, guided.guide_from, guided.nora_samples, guided.nora_reward_weight) == (2, "nora", 8, 1.0)
    guided = indicator.get_config("from_ref,grpo,ref_guide").objective  # Ref's samples: Nora is not sampled
    assert (guided.guide, guided.guide_from) == (2, "ref") and "nora_samples" not in guided
    with pytest.raises(ValueError, match="choose one of the guides"):
        indicator.get_config("nora_guide,ref_guide")
    assert not indicator.get_config().alongside  # the main command trains the paper's objective alone
    improved = indicator.get_config("side_by_side").alongside.improved.objective
    assert (improved.spare_rare, improved.guide_from, improved.nora_samples) == (True, "ref", 8)
    assert indicator.get_config("side_by_side,smoke").alongside.improved.trainer.num_steps == 4  # smoke too
    with pytest.raises(ValueError, match="does not combine with math"):
        indicator.get_config("side_by_side,math")
    with pytest.raises(ValueError, match="add one of nora_reward"):
        indicator.get_config("from_ref,grpo,spare_rare")
    spared = indicator.get_config("from_ref,grpo,nora_reward,spare_rare").objective
    assert spared.spare_rare and spared.nora_samples == 8
    with pytest.raises(ValueError, match="config variant 'nora_rewrd' .* not one of this config's: .*nora_reward"):
        indicator.get_config("from_ref,grpo,nora_rewrd")  # a misspelt variant would run another experiment
    assert clipped.get_config("signed").objective.psi_form == "signed"  # a variant that keeps Formulation 1
    with pytest.raises(ValueError, match="config variant 'nora_reward' .* not one of this config's"):
        clipped.get_config("nora_reward")  # it would be dropped when clipped.py rebuilds the objective
    from configs import contrastive
    with pytest.raises(ValueError, match="config variant 'signed'"):
        contrastive.get_config("signed")  # contrastive sets psi itself
    from configs import polyepo
    assert polyepo.get_config("pass_at_k,smoke").objective.advantage == "pass_at_k"  # its own names reach no other
    with pytest.raises(ValueError, match="config variant 'from_ref' .*: grpo_diversity, math, pass_at_k"):
        polyepo.get_config("from_ref")


def test_compare_overrides_take_the_fields_type_and_an_unknown_field_fails_first(tmp_path):
    assert experiments._typed(0.3, "0") == 0.0 and isinstance(experiments._typed(0.3, "0"), float)
    assert experiments._typed(True, "false") is False and experiments._typed(60, "300") == 300
    assert experiments._typed("eval", "validation") == "validation"
    with pytest.raises(ConfigError, match="trainer.nope"):
        experiments.compare({"indicator": indicator.get_config("smoke")}, [0], str(tmp_path), {"trainer.nope": "1"})
    assert not os.listdir(tmp_path)  # nothing ran
