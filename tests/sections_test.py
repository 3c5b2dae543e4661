"""Typed config sections: every component's section is parsed and checked before any work, with
messages that name the field, the value and the fix."""

import dataclasses
import json

import pytest

from configs import common, distill, indicator, nora_grpo, polyepo, ref_sft
from dora_jax import experiments, objectives, pipeline, sections, tasks
from dora_jax.sections import ConfigError, require


@dataclasses.dataclass(frozen=True)
class _Example:
    rate: float = 0.5
    steps: int = 3
    name: str = "a"

    def __post_init__(self):
        require(self.rate > 0, "rate", self.rate, "use a positive rate.")


def test_parse_fills_defaults_and_widens_ints_to_floats():
    parsed = sections.parse(_Example, {"rate": 2, "name": "b"}, "ex")
    assert parsed == _Example(rate=2.0, steps=3, name="b") and isinstance(parsed.rate, float)
    assert sections.parse(_Example, parsed, "ex") is parsed
    assert dict(sections.defaults(_Example, steps=7)) == {"rate": 0.5, "steps": 7, "name": "a"}


@pytest.mark.parametrize("section, message", [
    ({"stesp": 1}, r"config\.ex\.stesp is not a field of config\.ex; did you mean ex\.steps\?"),
    ({"steps": "4"}, r"config\.ex\.steps='4' is a str; it must be a int"),
    ({"steps": 1.5}, r"config\.ex\.steps=1\.5 is a float; it must be a int"),
    ({"rate": -1.0}, r"config\.ex\.rate=-1\.0: use a positive rate\."),
])
def test_parse_names_the_field_and_the_fix(section, message):
    with pytest.raises(ConfigError, match=message):
        sections.parse(_Example, section, "ex")


def test_every_shipped_config_passes_the_check():
    for module in (indicator, nora_grpo, ref_sft, polyepo, distill):
        for arg in (None, "smoke"):
            pipeline.check_config(module.get_config(arg))


def test_a_config_carries_only_the_fields_its_objective_reads():
    sft = ref_sft.get_config().objective
    assert "delta" not in sft and "set_size" not in sft and "eps_low" not in sft
    assert {"beta", "delta", "psi_form"} <= set(indicator.get_config().objective)
    assert "set_size" in polyepo.get_config().objective and "sft" not in indicator.get_config()
    # A loss switched on the command line reads its own defaults for what the section leaves out.
    c = indicator.get_config()
    c.objective.loss = "dora_clipped"
    assert objectives.parse_config(c.objective).credit == "token"


def _mode_discount_on_math(c):
    c.objective.update(nora_samples=8, nora_reward_by="modes")
    c.task = tasks.default_config("math")  # math labels no strategies


def _guided_handover(c):
    c.objective.update(guide=2, guide_from="ref")
    c.rollout.handover_window = 2


@pytest.mark.parametrize("change, message", [
    (lambda c: c.rollout.update(top_p=1.5), r"config\.rollout\.top_p=1\.5: use a mass in \(0, 1\]"),
    (lambda c: c.rollout.update(mode="remote"), r"config\.rollout\.mode='remote': use one of inline, process"),
    (lambda c: c.rollout.update(sync_every=3), r"config\.rollout\.max_staleness=0: .*set max_staleness >= sync_every - 1"),
    (lambda c: c.optim.update(schedule="linear"), r"config\.optim\.schedule='linear': use one of constant, cosine"),
    (lambda c: c.objective.update(delta=0.0), r"config\.objective\.delta=0\.0: the clip range must be positive"),
    (lambda c: c.objective.update(loss="dora_indicatr"), r"config\.objective\.loss='dora_indicatr': use a registered loss"),
    (lambda c: c.task.update(num_problems=5), r"config\.task\.num_problems=5"),
    (lambda c: c.update(policy_init="scratch"), r"config\.policy_init='scratch': use one of nora, ref, ref_nora_mean, random"),
    (lambda c: c.diversity.embedding.update(threshhold=0.3), r"did you mean diversity\.embedding\.threshold\?"),
    (lambda c: c.build.ref.trainer.update(num_steps=0), r"config\.trainer\.num_steps=0"),  # a config it builds from
    (lambda c: c.update(sweep="seed=0,1"), r"config\.sweep='seed=0,1' is set: a sweep is many runs"),
    (lambda c: c.trainer.update(stop_kl=-1.0), r"config\.trainer\.stop_kl=-1\.0: use 0"),
    (_mode_discount_on_math, r"nora_reward_by='modes' reads strategy labels, which the math task does not give"),
    (lambda c: c.objective.update(guide=2), r"config\.objective\.guide=2: .*set nora_samples >= guide"),
    (lambda c: c.objective.update(guide=2, guide_from="dora"), r"config\.objective\.guide_from='dora': use 'nora'"),
    (_guided_handover, r"config\.objective\.guide puts whole responses of another policy in the policy's groups"),
])
def test_check_config_rejects_a_bad_value_before_any_work(change, message, tmp_path):
    c = indicator.get_config("smoke")
    change(c)
    with pytest.raises(ConfigError, match=message):
        pipeline.run(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing was built or written


def test_an_sft_loss_needs_its_section():
    c = common.get_config()
    c.objective = common.objective("sft")
    with pytest.raises(ConfigError, match=r"config\.sft is missing"):
        pipeline.check_config(c)
    common.sft(c)
    pipeline.check_config(c)


def test_a_sweep_over_a_field_the_config_does_not_have_is_refused_before_any_run(tmp_path):
    c = indicator.get_config("smoke")
    c.sweep = "objective.k=2,4"  # the indicator's objective section has no k
    with pytest.raises(ConfigError, match=r"config\.sweep='objective\.k=2,4': this config has no field"):
        experiments.sweep(c, str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_model_dirs_data_files_and_the_mesh_are_checked_before_any_work(tmp_path):
    def refused(change, message):
        c = indicator.get_config("smoke")
        change(c)
        with pytest.raises(ConfigError, match=message):
            pipeline.run(c, str(tmp_path / "run"))
        assert not (tmp_path / "run").exists()

    refused(lambda c: c.update(ref_dir=str(tmp_path / "nowhere")), r"config\.ref_dir=.*nowhere.*no such model directory")
    mamba = tmp_path / "mamba"
    mamba.mkdir()
    (mamba / "config.json").write_text('{"model_type": "mamba", "hidden_size": 64}')
    refused(lambda c: c.update(ref_dir=str(mamba)), r"config\.ref_dir=.*model_type 'mamba' is not supported")
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps(dict(
        model_type="qwen2", vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2)))
    refused(lambda c: (c.update(ref_dir=str(qwen)), c.mesh.update(data=1, tensor=4)),
            r"config\.mesh\.tensor=4 does not divide the model's num_heads=6")
    math = nora_grpo.get_config("math")
    math.ref_dir = str(qwen)
    math.task.train_data = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match=r"config\.task\.train_data=.*missing\.jsonl does not exist"):
        pipeline.run(math, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
