"""Runs the notebooks in colabs/ top to bottom in their fast mode, without Jupyter (STYLE.md item 12)."""

import json
import math
import os
import warnings

import matplotlib
import pytest

matplotlib.use("Agg")  # before the notebook imports pyplot: figures only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dora_jax import objectives  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "colabs", "explore_objectives.ipynb")


def _code_cells(path: str) -> list[str]:
    """Each code cell's source without its IPython-only lines (`!shell`, `%magic`), which plain Python rejects."""
    with open(path) as f:
        notebook = json.load(f)
    assert notebook["nbformat"] == 4
    cells = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        assert lines[0].startswith("# @title "), f"untitled cell: {lines[0]!r}"
        cells.append("\n".join(line for line in lines if not line.startswith(("!", "%"))))
    return cells


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


@pytest.mark.slow
def test_explore_objectives_notebook_runs_in_fast_mode(build_cache, tmp_path, monkeypatch, capsys):
    runs, cache = tmp_path / "runs", build_cache  # the session's: the pipeline tests read the same Ref and Nora
    monkeypatch.setenv("DORA_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("DORA_NOTEBOOK_DIR", str(runs))
    monkeypatch.setenv("DORA_NOTEBOOK_CACHE", str(cache))
    monkeypatch.chdir(REPO)  # where a clone's notebook finds configs/
    namespace = {"__name__": "__main__"}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() under Agg
            for i, source in enumerate(_code_cells(NOTEBOOK)):
                exec(compile(source, f"{NOTEBOOK}, code cell {i}", "exec"), namespace)
        out = capsys.readouterr().out

        assert namespace["FAST"] and os.path.realpath(namespace["REPO_ROOT"]) == os.path.realpath(REPO)
        # Ref and Nora are built at most once (not at all when earlier tests of the session built them); each of
        # the three runs reads what it did not build from the cache, and so does Nora's build for its Ref.
        built = {name: out.count(f"No {name} checkpoint given: building it into") for name in ("ref", "nora")}
        assert max(built.values()) <= 1, out[-3000:]
        assert out.count("Using the cached nora policy") == 3 - built["nora"]
        assert out.count("Using the cached ref policy") == 3 - built["ref"] + built["nora"]

        summaries, records = namespace["summaries"], namespace["records"]
        assert set(summaries) == {"dora_indicator", "dora_clipped", "my_loss"}
        for name, summary in summaries.items():
            assert set(summary["policies"]) == {"ref", "nora", "dora"}, name
            for entry in summary["policies"].values():
                assert _finite(entry["pass@k"].values()) and all(0 <= v <= 1 for v in entry["pass@k"].values())
            # The shared cached Ref and Nora, sampled with the same keys, evaluate identically in every run.
            for policy in ("ref", "nora"):
                assert summary["policies"][policy] == summaries["dora_indicator"]["policies"][policy], (name, policy)
            config = json.loads((runs / name / "config.json").read_text())
            assert config["cache_dir"] == str(cache) and (runs / name / "eval.json").exists()
        assert json.loads((runs / "my_loss" / "config.json").read_text())["objective"]["loss"] == "my_loss"

        # The notebook's objective is registered and trained Dora with finite metrics.
        assert objectives.get_loss("my_loss") is namespace["my_loss"]
        trained = records["my_loss"][1:]  # row 0 is the initial evaluation
        assert len(trained) == 4
        for key in ("loss", "objective/indicator_frac", "objective/adv_pos_frac", "objective/weight_mean",
                    "indicator/frac", "psi/mean", "kl/policy_nora_token", "grad_norm"):
            assert _finite(r[key] for r in trained), key
        assert all(0 <= r["indicator/frac"] <= r["objective/adv_pos_frac"] <= 1 for r in trained)

        for fig_name, stem in (("fig_strategies", "strategies"), ("fig_passk", "pass_at_k"), ("fig_curves", "curves")):
            fig = namespace[fig_name]
            assert isinstance(fig, Figure) and all(ax.has_data() for ax in fig.axes), fig_name
            assert (runs / "figures" / f"{stem}.png").stat().st_size > 0
        assert len(namespace["fig_passk"].axes[0].lines) == 5  # Ref, Nora and the three Dora variants
    finally:
        plt.close("all")
        objectives.LOSSES.pop("my_loss", None)  # other tests see the library's registry only
