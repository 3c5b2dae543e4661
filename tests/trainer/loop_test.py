"""Trainer invariants: sharded == unsharded, exact accumulation, kill/resume, NaN guard."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import common
from dora_jax.testing import RandomRollouts
from dora_jax import sharding
from dora_jax.trainer import NonFiniteError, Trainer, make_optimizer, make_update
from dora_jax.trainer.loop import TrainerConfig, initial_trees
from dora_jax.trainer.state import init_state
from dora_jax.trainer.step import CPU_UPDATE_OPTIONS_KNOWN

SHAPE = dict(vocab_size=64, prompts=4, group_size=4, prompt_len=6, response_len=8)
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def smoke_config(**trainer):
    c = common.get_config()
    c.model.update(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=8, tie_word_embeddings=False)
    c.objective.group_size = SHAPE["group_size"]
    c.optim.lr = 1e-3
    c.trainer.update({"num_steps": 3, "checkpoint_every": 100, "progress": False, **trainer})
    return c


def _one_update(config, devices, workdir, loss="dora_indicator"):
    config.objective.loss = loss
    trainer = Trainer.from_config(config, workdir, devices=devices)
    batch, _ = RandomRollouts(seed=3, **SHAPE).next_batch(0)
    state, metrics = trainer.update(trainer.state, trainer.frozen, batch)
    return trainer, jax.device_get(state.params), jax.device_get(metrics)


@pytest.fixture(scope="module")
def single_device_update(tmp_path_factory):
    """`(loss, accum, agg) -> (params, metrics)` of one update on one device, computed once per argument (in each
    test worker) for the tests that compare other layouts with it. agg None: the config's default."""
    results = {}

    def update(loss="dora_indicator", accum=1, agg=None):
        c = smoke_config()
        c.objective.agg = agg or c.objective.agg  # the default, named: one entry whether or not a test names it
        key = (loss, accum, c.objective.agg)
        if key not in results:
            c.mesh.update(data=1, fsdp=1, tensor=1)
            c.optim.grad_accum = accum
            results[key] = _one_update(c, jax.devices()[:1], tmp_path_factory.mktemp("single"), loss)[1:]
        return jax.tree.map(lambda x: x, results[key])  # fresh containers: a test may edit its copy

    return update


@pytest.mark.parametrize("loss,mesh,accum", [
    ("dora_indicator", dict(data=2, fsdp=2, tensor=2), 1),
    ("grpo", dict(data=2, fsdp=2, tensor=2), 1),
    ("dora_indicator", dict(data=2, fsdp=2, tensor=1), 2),
    ("dora_indicator", dict(data=1, fsdp=4, tensor=1), 2),
    ("dora_indicator", dict(data=1, fsdp=2, tensor=2), 1),
])
def test_sharded_update_equals_single_device(single_device_update, tmp_path, loss, mesh, accum):
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 simulated CPU devices"
    p1, m1 = single_device_update(loss, accum)
    sharded = smoke_config()
    sharded.mesh.update(**mesh)
    sharded.optim.grad_accum = accum
    n = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    trainer, p8, m8 = _one_update(sharded, jax.devices()[:n], tmp_path, loss)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for k in m1:
        np.testing.assert_allclose(m1[k], m8[k], rtol=1e-6, atol=1e-5, err_msg=k)  # grad_norm ~20: f32 ulps
    if mesh != dict(data=2, fsdp=2, tensor=2):
        return
    # The layout is what config.mesh.rules say: embed->fsdp, heads/kv_heads/mlp/vocab->tensor.
    sh = jax.tree.map(lambda x: x.sharding.spec, trainer.state.params)
    assert sh["layers"]["attn"]["q_kernel"] == P(None, "fsdp", "tensor", None)
    assert sh["layers"]["attn"]["k_kernel"] == P(None, "fsdp", "tensor", None)
    assert sh["layers"]["attn"]["o_kernel"] == P(None, "tensor", None, "fsdp")
    assert sh["layers"]["mlp"]["down_kernel"] == P(None, "tensor", "fsdp")
    assert sh["embedding"] == P("tensor", "fsdp")
    assert sh["lm_head"] == P("fsdp", "tensor")
    assert sh["final_norm"]["scale"] == P(None)
    mu = trainer.state.opt_state[1][0].mu  # Adam moments: split like the params, and over data too (ZeRO-1)
    assert mu["layers"]["mlp"]["gate_kernel"].sharding.spec == P(None, ("data", "fsdp"), "tensor")
    assert trainer.frozen["nora"]["embedding"].sharding.spec == P("tensor", "fsdp")


def test_gradient_accumulation_is_exact(single_device_update):
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        (p1, m1), (p4, m4) = (single_device_update(accum=accum, agg=agg) for accum in (1, 4))
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
            np.testing.assert_allclose(a, b, atol=1e-5)  # Adam divides by sqrt(v): f32 ulps of tiny grads grow
        for k in m1:
            np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5, atol=1e-6, err_msg=k)


_CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from tests import xla_flags
    os.environ["XLA_FLAGS"] = xla_flags(2)
    from tests.trainer.loop_test import SHAPE, smoke_config
    from dora_jax.testing import RandomRollouts
    from dora_jax.trainer import Trainer
    c = smoke_config(num_steps=8, checkpoint_every=4)
    c.mesh.update(data=2)
    Trainer.from_config(c, sys.argv[1]).run(RandomRollouts(seed=5, **SHAPE))
""")


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows}


def _run_child(script, *args) -> None:
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_uninterrupted_run(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=os.path.abspath(ROOT)))
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    _run_child(script, full)

    # Kill the second run as soon as its step-4 checkpoint is on disk. The deadline only guards against a hang: a
    # loaded machine may take minutes to get there, and the test must not depend on how fast it is.
    proc = subprocess.Popen([sys.executable, str(script), killed], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1200
    while not os.path.isdir(os.path.join(killed, "checkpoints", "4")) and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.isdir(os.path.join(killed, "checkpoints", "4"))
    _run_child(script, killed)

    a, b = _metrics(full), _metrics(killed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in (5, 6, 7, 8):
        for k in a[step]:
            assert a[step][k] == pytest.approx(b[step][k], rel=1e-6, abs=1e-7), (step, k)


class _PoisonAt(RandomRollouts):
    def __init__(self, bad_step, **kw):
        super().__init__(**kw)
        self.bad_step = bad_step

    def next_batch(self, step):
        batch, host_metrics = super().next_batch(step)
        if step == self.bad_step:
            batch.logp_old_BxT[0, -1] = np.nan
            batch.response_mask_BxT[0, -1] = 1.0
        return batch, host_metrics


def test_nan_stops_with_step_and_metric_and_keeps_checkpoint(tmp_path):
    c = smoke_config(num_steps=6, checkpoint_every=2)
    c.mesh.update(data=1)
    trainer = Trainer.from_config(c, str(tmp_path), devices=jax.devices()[:1])
    with pytest.raises(NonFiniteError, match=r"step 4: metric '[\w/]+' is nan.*last good checkpoint \(step 2\)"):
        trainer.run(_PoisonAt(bad_step=3, seed=1, **SHAPE))
    again = Trainer.from_config(c, str(tmp_path), devices=jax.devices()[:1])
    assert again.step == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(again.state.params))


def test_truncate_drops_lines_after_the_checkpoint_and_a_cut_off_last_line(tmp_path):
    from dora_jax.trainer.loop import _truncate_jsonl
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    _truncate_jsonl(str(path), 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    _truncate_jsonl(str(path), -1)  # no checkpoint: everything is recomputed
    assert path.read_text() == ""


def test_truncate_killed_before_its_rename_leaves_the_file_whole(tmp_path, monkeypatch):
    from dora_jax.trainer.loop import _truncate_jsonl
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')

    def killed(*args):
        raise KeyboardInterrupt  # the process dies between writing the new lines and renaming them into place
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _truncate_jsonl(str(path), 1)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'  # the old file, whole


@pytest.mark.skipif(not CPU_UPDATE_OPTIONS_KNOWN, reason="this jaxlib does not know the CPU dot options")
def test_cpu_update_turns_off_dot_library_fusions(tmp_path):
    """The update turns off XLA's YNNPACK dot fusions for itself only (step.CPU_UPDATE_OPTIONS)."""
    trainer = Trainer.from_config(smoke_config(), str(tmp_path), devices=jax.devices()[:1])
    batch, _ = RandomRollouts(seed=3, **SHAPE).next_batch(0)
    update_hlo = trainer.update.lower(trainer.state, trainer.frozen, batch).compile().as_text()
    plain_hlo = jax.jit(lambda a, b: a @ b).lower(np.ones((64, 64), np.float32), np.ones((64, 64), np.float32)) \
        .compile().as_text()
    assert "ynn_fusion" in plain_hlo, "jaxlib no longer fuses dots with YNNPACK by default; drop CPU_UPDATE_OPTIONS"
    assert "ynn_fusion" not in update_hlo


def _trainer_from_components(c, workdir, stop_rules):
    model_config, frozen, init = initial_trees(c)
    tx = make_optimizer(c.optim, c.trainer.num_steps)
    update = make_update(model_config, c.objective, tx, temperature=1.0, grad_accum=1,
                         response_budget=SHAPE["response_len"])
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    options = TrainerConfig(num_steps=c.trainer.num_steps, checkpoint_every=100, progress=False)
    return Trainer(model_config, frozen, init, tx, update, mesh, c.mesh.rules, workdir, options, stop_rules)


def test_stop_rules_stop_and_a_resume_keeps_the_stop_while_its_rule_fires(tmp_path):
    c = smoke_config(num_steps=6)
    reached = lambda record: "step 3 reached" if record.get("step", 0) >= 3 else None  # noqa: E731
    trainer = _trainer_from_components(c, str(tmp_path), [reached])
    trainer.run(RandomRollouts(seed=5, **SHAPE))
    # The rule reads the metrics of the update just applied: the one whose record trips it is the last.
    assert trainer.step == 3 and trainer.stopped_early == "stopped at step 3: step 3 reached"
    again = _trainer_from_components(c, str(tmp_path), [reached])
    assert again.run(RandomRollouts(seed=5, **SHAPE)) == [] and again.step == 3
    freed = _trainer_from_components(c, str(tmp_path), [])  # no rule fires any more: it trains on
    freed.run(RandomRollouts(seed=5, **SHAPE))
    assert freed.step == 6 and freed.stopped_early is None


def test_a_stop_rule_reads_the_update_just_applied_also_right_after_a_resume(tmp_path):
    c = smoke_config(num_steps=6)
    _trainer_from_components(c, str(tmp_path), []).run(RandomRollouts(seed=5, **SHAPE), num_steps=3)  # saved at 3
    reached = lambda record: "step 4 reached" if record["step"] >= 4 else None  # noqa: E731
    resumed = _trainer_from_components(c, str(tmp_path), [reached])
    written = resumed.run(RandomRollouts(seed=5, **SHAPE))
    assert [r["step"] for r in written] == [4] and resumed.step == 4
    assert resumed.stopped_early == "stopped at step 4: step 4 reached"


def test_the_kl_cap_keeps_the_policy_whose_kl_tripped_it():
    """The update that measures its policy over stop_kl is not applied: the kept policy is the measured one."""
    c = smoke_config()
    c.optim.lr = 3e-2  # the policy leaves Nora within an update or two
    model_config, frozen, init = initial_trees(c)
    tx = make_optimizer(c.optim, c.trainer.num_steps)
    update = jax.jit(make_update(model_config, c.objective, tx, temperature=1.0, grad_accum=1,
                                 response_budget=SHAPE["response_len"], stop_kl=1e-4))
    batch, _ = RandomRollouts(seed=5, **SHAPE).next_batch(0)
    state = init_state(init, tx)
    applied = []
    for _ in range(3):
        before = state.params
        state, metrics = update(state, frozen, batch)
        applied.append(float(metrics["update/applied"]))
    assert applied == [1.0, 0.0, 0.0]  # the first starts at Nora (KL 0); after it the policy is over the cap
    assert float(metrics["update_norm"]) == 0.0
    assert float(metrics["kl/policy_nora_token"]) > 1e-4
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)))


_SHAPED_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import jax
    from tests.trainer.loop_test import SHAPE, smoke_config
    from dora_jax.testing import RandomRollouts
    from dora_jax.trainer import Trainer
    if __name__ == "__main__":
        c = smoke_config(num_steps=2, checkpoint_every=1)
        c.model.hidden_size = int(sys.argv[2])
        Trainer.from_config(c, sys.argv[1], devices=jax.devices()[:1]).run(RandomRollouts(seed=5, **SHAPE))
""")


def test_a_checkpoint_of_other_shapes_is_named_last_without_shutdown_noise(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_SHAPED_CHILD.format(root=os.path.abspath(ROOT)))
    workdir = str(tmp_path / "run")
    subprocess.run([sys.executable, str(script), workdir, "32"], check=True, capture_output=True)
    failed = subprocess.run([sys.executable, str(script), workdir, "48"], capture_output=True, text=True)
    assert failed.returncode != 0
    lines = failed.stderr.strip().splitlines()
    assert "params/embedding is stored as [64, 32], this config needs [64, 48]" in lines[-1], lines[-1]
    assert "use a new --workdir or the original config" in lines[-1]
    assert "Event loop is closed" not in failed.stderr and "Python is likely shutting down" not in failed.stderr
    assert failed.stderr.count("Traceback") == 1


def test_a_full_disk_is_named_before_a_checkpoint_is_written_and_the_last_one_is_kept(tmp_path, monkeypatch):
    c = smoke_config(num_steps=1, checkpoint_every=1)
    c.mesh.update(data=1)
    trainer = Trainer.from_config(c, str(tmp_path), devices=jax.devices()[:1])
    trainer.run(RandomRollouts(seed=5, **SHAPE))
    assert trainer.ckpt.latest_step() == 1
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    with pytest.raises(OSError, match=r"1000 bytes|0\.0 MiB free, the checkpoint of step 2 needs about .* the "
                                      r"checkpoint of step 1 is kept"):
        trainer.run(RandomRollouts(seed=5, **SHAPE), num_steps=2)
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert Trainer.from_config(c, str(tmp_path), devices=jax.devices()[:1]).step == 1


def test_the_same_weights_score_the_same_in_any_slot_and_from_any_format(tmp_path):
    """Ref from a HF dir and Nora from a dora_jax checkpoint of the same weights, computed in bfloat16: equal
    bit for bit (bf16 compute is sensitive to a rounding-level change of the weights, so this must be exact)."""
    from dora_jax import scoring
    from dora_jax.models import ModelConfig, convert, hf

    hf_dir, ckpt = str(tmp_path / "hf"), str(tmp_path / "ckpt")
    hf.save_random(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                               num_kv_heads=2, head_dim=8, model_type="llama", qkv_bias=False), hf_dir, seed=1)
    convert.convert(hf_dir, ckpt)
    c = smoke_config()
    c.ref_dir, c.nora_dir = hf_dir, ckpt
    c.model.dtype = "bfloat16"
    trainer = Trainer.from_config(c, str(tmp_path / "run"), devices=jax.devices()[:1])
    for a, b in zip(jax.tree.leaves(trainer.frozen["ref"]), jax.tree.leaves(trainer.frozen["nora"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batch, _ = RandomRollouts(seed=3, **SHAPE).next_batch(0)
    scores = scoring.score(trainer.model_config, {"ref": trainer.frozen["ref"], "nora": trainer.frozen["nora"],
                                                  "policy": trainer.state.params}, batch.tokens_BxT, batch.mask_BxT)
    np.testing.assert_array_equal(np.asarray(scores["ref"]), np.asarray(scores["nora"]))
    np.testing.assert_array_equal(np.asarray(scores["policy"]), np.asarray(scores["nora"]))
    assert not np.asarray(scores["kl/policy_nora"]).any()


def test_a_policy_can_start_halfway_between_ref_and_nora():
    c = smoke_config()
    c.policy_init = "ref_nora_mean"
    _, frozen, init = initial_trees(c)
    for r, n, m in zip(*(jax.tree.leaves(t) for t in (frozen["ref"], frozen["nora"], init))):
        np.testing.assert_allclose(np.asarray(m), (np.asarray(r) + np.asarray(n)) / 2, rtol=1e-6)
    assert any(not np.array_equal(r, n) for r, n in zip(jax.tree.leaves(frozen["ref"]), jax.tree.leaves(frozen["nora"])))
