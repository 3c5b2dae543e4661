"""Forgotten strategies and their recovery: the definition, its report section and the comparison's columns."""

import numpy as np
import pytest

from dora_jax.eval import evaluate, report


def _result(counts: dict[int, int], correct_of: dict[int, int] | None = None, n: int = 10) -> dict:
    """Samples of one policy on 10 problems x n with the given strategy counts (-1 fills the rest)."""
    ids = np.concatenate([np.full(c, s) for s, c in counts.items()] + [np.full(10 * n - sum(counts.values()), -1)])
    correct = np.zeros_like(ids, bool)
    for s, c in (correct_of or {}).items():
        correct[np.flatnonzero(ids == s)[:c]] = True
    return {"strategy": ids.reshape(10, n).astype(np.int32), "correct": correct.reshape(10, n)}


def test_forgotten_strategies_are_those_nora_samples_under_half_as_often_as_ref():
    results = {"ref": _result({0: 50, 1: 30, 2: 20}, {1: 10, 2: 10}),
               "nora": _result({0: 90, 1: 10}, {1: 2}),
               "dora": _result({0: 50, 1: 25, 2: 25}, {1: 8, 2: 12}),
               "half": _result({0: 70, 1: 20, 2: 10}, {1: 6, 2: 5})}
    found = evaluate.recovery(results)
    assert found["strategies"] == [1, 2]  # 1: 10% < 15%, 2: 0% < 10%; 0: 90% is not below 25%
    p = found["policies"]
    assert p["ref"]["mass"] == pytest.approx(0.5) and p["nora"]["mass"] == pytest.approx(0.1)
    assert p["ref"]["recovery"] == pytest.approx(1.0) and p["nora"]["recovery"] == pytest.approx(0.0)
    assert p["dora"]["recovery"] == pytest.approx(1.0)  # (0.5 - 0.1) / (0.5 - 0.1)
    assert p["half"]["recovery"] == pytest.approx(0.5)  # (0.3 - 0.1) / 0.4
    # Correct samples only: Ref 0.20, Nora 0.02, Dora 0.20, half 0.11.
    assert p["dora"]["correct_recovery"] == pytest.approx(1.0)
    assert p["half"]["correct_recovery"] == pytest.approx(0.5)


def test_no_recovery_without_ref_and_nora_or_when_nothing_is_forgotten():
    same = _result({0: 50, 1: 50})
    assert evaluate.recovery({"ref": same, "dora": same}) is None
    assert evaluate.recovery({"ref": same, "nora": _result({0: 40, 1: 60})}) is None


class _Task:
    strategy_names = ()

    def prompts(self, problems):
        return np.ones((len(problems), 2), np.int32), np.ones((len(problems), 2), np.int32)

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_an_unlabelled_task_clusters_every_policys_samples_of_a_problem_together():
    # Two problems; on each, Ref writes "1 2" and "7 8" answers, Nora only "1 2": clusters differ across problems.
    tokens = {"ref": [[[1, 2], [7, 8]], [[1, 2], [7, 8]]], "nora": [[[1, 2], [1, 2]], [[1, 2], [1, 2]]]}
    results = {name: {"tokens": np.array(t), "mask": np.ones_like(np.array(t)), "correct": np.ones((2, 2), bool)}
               for name, t in tokens.items()}
    ids = evaluate.joint_clusters(results, _Task(), [0, 1], evaluate.diversity.default_config())
    assert ids["ref"][0, 0] == ids["nora"][0, 0] == ids["nora"][0, 1] != ids["ref"][0, 1]
    assert len({int(i) for i in np.concatenate([ids["ref"], ids["nora"]]).ravel()}) == 4  # unique across problems
    found = evaluate.recovery(results, ids)
    assert len(found["strategies"]) == 2 and found["policies"]["ref"]["recovery"] == pytest.approx(1.0)


def test_forgotten_only_problems_are_those_only_forgotten_strategies_solve():
    # Strategy 2 is forgotten. Problem 0 is also solved by strategy 0 (kept), problem 1 only by 2, problem 2 by
    # 1 and 2, problem 3 by nothing: only problem 1 counts.
    solved_by = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 0, 0]], bool)
    assert evaluate.forgotten_only(solved_by, [2]).tolist() == [False, True, False, False]
    assert evaluate.forgotten_only(solved_by, [1, 2]).tolist() == [False, True, True, False]
    assert not evaluate.forgotten_only(solved_by, [0]).any()  # strategy 0 never solves a problem alone


def test_pass_on_a_subset_of_problems_uses_eight_samples_or_all_there_are():
    correct = np.arange(8)[None, :] < np.array([8, 1, 0])[:, None]  # 8, 1 and 0 correct of 8 (the first ones)
    assert evaluate.pass_on(correct, np.array([False, True, True])) == {"problems": 2, "pass@8": 0.5}
    assert evaluate.pass_on(correct[:, :4], np.array([True, True, True])) == {"problems": 3, "pass@4": pytest.approx(2 / 3)}


def _summary(dora_recovery: float, dora_nora: float, rare: float, only: float) -> dict:
    def policy(acc):
        return {"accuracy": acc, "valid_frac": 0.9, "pass@k": {"1": acc, "8": acc + 0.2, "32": acc + 0.3},
                "distinct_correct_strategies": 1.0, "rare_only": {"problems": 5, "pass@8": rare if acc < 0.25 else 0.3}}
    policies = {"ref": policy(0.2), "nora": policy(0.3), "dora": policy(0.24)}
    for name, value in {"ref": 0.3, "nora": 0.15, "dora": only}.items():
        policies[name]["forgotten_only"] = {"problems": 3, "pass@8": value}
    return {"policies": policies,
            "mixtures": {"dora+nora": {"pass@k": {"8": dora_nora}}, "nora+ref": {"pass@k": {"8": 0.55}}},
            "forgotten": {"policies": {"dora": {"recovery": dora_recovery, "correct_recovery": 0.1}}},
            "timing": {}, "kl_to_nora": 0.2}


def test_the_comparison_counts_the_seeds_in_which_each_target_holds():
    text = report.compare_table({"signed": {0: _summary(0.6, 0.6, 0.4, 0.25), 1: _summary(0.4, 0.5, 0.2, 0.2)}}, [0, 1])
    assert "| recovery | correct-only recovery | rare-only pass@8 | forgotten-only pass@8 | valid |" in text
    assert "| forgotten-only pass@8: half of Ref's lead won back |" in text
    row = [line for line in text.splitlines() if line.startswith("| signed |")][-1]
    # +Nora > Nora+Ref in 1 of 2, rare-only above Nora's 0.3 in 1, forgotten-only: half of Ref's lead over Nora
    # (0.3 - 0.15) won back in 1 (0.25: 2/3 of it; 0.2: 1/3, though above Nora's), pass@1 0.24 >= 0.21 in both,
    # recovery in 1.
    assert row == "| signed | 1/2 | 1/2 | 1/2 | 2/2 | 1/2 |"


def test_the_report_shows_forgotten_only_pass_at_8_beside_recovery():
    counts = {"sum": 5, "product": 1}
    policy = {"strategy_counts": counts, "correct_strategy_counts": counts}
    found = {"strategies": ["product"], "source": "labels",
             "policies": {n: {"mass": 0.1, "recovery": 0.5, "correct_mass": 0.1, "correct_recovery": 0.5}
                          for n in ("ref", "nora")}}
    summary = {"policies": {"ref": dict(policy), "nora": dict(policy)}, "forgotten": found}
    assert "forgotten-only" not in "\n".join(report.forgotten_section(summary))
    for name, value in {"ref": 0.333, "nora": 0.125}.items():
        summary["policies"][name]["forgotten_only"] = {"problems": 3, "pass@8": value}
    lines = report.forgotten_section(summary)
    assert any("the 3 evaluated problems that only forgotten strategies solve" in line for line in lines)
    assert "| policy | share on forgotten | recovery | correct share on forgotten | correct-only recovery | " \
           "forgotten-only pass@8 |" in lines and "|---|---|---|---|---|---|" in lines
    assert "| Nora | 0.100 | 0.500 | 0.100 | 0.500 | 0.125 |" in lines


class _LabelledTask:
    strategy_names = ("a", "b", "c")

    def strategy_name(self, i):
        return self.strategy_names[i] if 0 <= i < 3 else "invalid/other"


def test_the_summary_counts_which_strategies_solve_the_rare_only_problems_and_the_forgotten_only_ones():
    # 4 problems x 8 samples. Ref samples strategies 0 and 2, Nora only 0 (2 is forgotten); problem 1 only 2 solves.
    solved_by = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [1, 0, 0]], bool)
    rare_only = np.array([False, True, True, False])

    def result(ids, correct_problems):
        ids = np.broadcast_to(np.array(ids), (4, 8)).copy()
        correct = np.zeros((4, 8), bool)
        correct[correct_problems, 0] = True
        return {"strategy": ids, "correct": correct, "valid": np.ones((4, 8), bool), "length": np.ones((4, 8))}

    results = {"ref": result([0, 0, 0, 0, 2, 2, 2, 2], [0, 1]), "nora": result([0] * 8, [0])}
    summary = evaluate.summarize(results, _LabelledTask(), rare_only, solved_by=solved_by)
    assert summary["rare_only_solved_by"] == {"b": 1, "c": 2}
    assert summary["forgotten"]["strategies"] == ["c"]
    assert summary["policies"]["ref"]["forgotten_only"] == {"problems": 1, "pass@8": 1.0}
    assert summary["policies"]["nora"]["forgotten_only"] == {"problems": 1, "pass@8": 0.0}
    assert summary["policies"]["nora"]["rare_only"] == {"problems": 2, "pass@8": 0.0}
    assert "forgotten_only" not in evaluate.summarize(results, _LabelledTask(), rare_only)["policies"]["ref"]


def test_won_back_is_the_share_of_refs_lead_over_nora_on_forgotten_only_problems():
    summary = {"policies": {n: {"forgotten_only": {"problems": 3, "pass@8": v}}
                            for n, v in {"ref": 0.4, "nora": 0.1, "dora": 0.25, "tie": 0.1}.items()}}
    assert report.won_back(summary, "dora") == pytest.approx(0.5)
    assert report.won_back(summary, "tie") == pytest.approx(0.0)
    summary["policies"]["ref"]["forgotten_only"]["pass@8"] = 0.1  # Ref does not lead: nothing to win back
    assert report.won_back(summary, "dora") is None
