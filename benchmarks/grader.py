"""The math grader: wall time per call against its timeout, idle and beside CPU-burning processes; accuracy on the
project's answer-pair table, next to `math-verify` when that is installed.

    python benchmarks/grader.py [--timeout_s=2] [--burners=2] [--rounds=3] [--json=FILE]

Wall time. A sequence of comparisons that cannot finish (exponent towers) interleaved with plain
ones is graded `--rounds` times, first idle, then with `--burners` processes spinning on the CPU
beside it. Each call's wall time is printed against the bound `timeout_s + 0.5 s`.

Accuracy. Every pair of `tests/tasks/math/grader_test.py::CASES` is graded by `grader.grade`
and, if `import math_verify` works (`pip install math-verify`, not a dependency of
this project), by `math_verify.verify(parse(gold), parse(response))` as its documentation shows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dora_jax.tasks.math import grader  # noqa: E402

TOWERS = [r"\boxed{2^{2^{100}}}", r"\boxed{9^{9^{9^9}}}", r"\boxed{2^{2^{2^{2^{2}}}}}", r"\boxed{10^{10^{10}}}"]
PLAIN = [(r"\boxed{\sqrt{8}}", r"2\sqrt{2}"), (r"\boxed{\frac{\sqrt{3}}{3}}", r"\frac{1}{\sqrt{3}}"),
         (r"\boxed{x^2+2x+1}", "(x+1)^2")]


def _burn() -> None:
    while True:
        pass


def wall_times(timeout_s: float, rounds: int) -> list[tuple[str, float]]:
    """(case, seconds) for towers and plain answers, each tower followed by a plain answer."""
    out = []
    for _ in range(rounds):
        for tower, (plain, gold) in zip(TOWERS, PLAIN * 2):
            for response, answer in ((tower, "1"), (plain, gold)):
                start = time.monotonic()
                grader.grade(response, answer, timeout_s=timeout_s)
                out.append((response, time.monotonic() - start))
    return out


def accuracy() -> dict:
    from tests.tasks.math.grader_test import CASES
    ours = [grader.grade(r, g).reward == float(e) for r, g, e in CASES]
    result = {"pairs": len(CASES), "dora_jax": sum(ours) / len(CASES),
              "dora_jax_wrong": [(r[:80], g) for (r, g, _), ok in zip(CASES, ours) if not ok]}
    try:
        import math_verify
    except ImportError:
        result["math_verify"] = "not installed (pip install math-verify)"
        return result
    # Adversarial megabyte answers are left out: math-verify bounds time with signals, not sizes.
    cases = [(r, g, e) for r, g, e in CASES if len(r) < 10_000]
    theirs = []
    for r, g, e in cases:
        try:
            gold = g if "$" in g or "\\boxed" in g else f"${g}$"  # parse() finds LaTeX in $...$ or \boxed{}
            ok = bool(math_verify.verify(math_verify.parse(gold), math_verify.parse(r))) == e
        except Exception:  # noqa: BLE001 - an error is a wrong verdict for the table
            ok = False
        theirs.append(ok)
    ours_same = [grader.grade(r, g).reward == float(e) for r, g, e in cases]
    result.update({"pairs_both": len(cases), "dora_jax_on_those": sum(ours_same) / len(cases),
                   "math_verify": sum(theirs) / len(cases),
                   "math_verify_wrong": [(r[:80], g, e) for (r, g, e), ok in zip(cases, theirs) if not ok]})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout_s", type=float, default=2.0)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bound = args.timeout_s + 0.5
    grader.grade(r"\boxed{\sqrt{4}}", "2")  # the workers' one-off start-up is not a call's cost
    figures = {"timeout_s": args.timeout_s, "bound_s": bound, "cpus": os.cpu_count()}
    for label, burners in (("idle", 0), (f"{args.burners} CPU burners beside it", args.burners)):
        procs = [multiprocessing.get_context("spawn").Process(target=_burn, daemon=True) for _ in range(burners)]
        for p in procs:
            p.start()
        try:
            times = wall_times(args.timeout_s, args.rounds)
        finally:
            for p in procs:
                p.kill()
        worst = max(t for _, t in times)
        towers = [t for r, t in times if r in TOWERS]
        plain = [t for r, t in times if r not in TOWERS]
        print(f"{label}: {len(times)} calls; towers max {max(towers):.2f} s, plain answers after a timeout max "
              f"{max(plain):.3f} s; worst {worst:.2f} s vs bound {bound:.2f} s (timeout_s + 0.5): "
              f"{'within' if worst <= bound else 'OVER'} ({worst / bound:.2f} of the bound)")
        figures[label] = {"calls": len(times), "tower_max_s": max(towers), "plain_max_s": max(plain),
                          "worst_s": worst, "within_bound": worst <= bound}
    acc = accuracy()
    figures["accuracy"] = acc
    line = f"answer pairs: {acc['pairs']}; dora_jax grader right on {acc['dora_jax']:.3f}"
    if isinstance(acc["math_verify"], float):
        line += (f"; on the {acc['pairs_both']} pairs both can take, dora_jax {acc['dora_jax_on_those']:.3f}, "
                 f"math-verify {acc['math_verify']:.3f}")
    else:
        line += f"; math-verify {acc['math_verify']}"
    print(line)
    for name in ("dora_jax_wrong", "math_verify_wrong"):
        for case in acc.get(name, []):
            print(f"  {name}: {case}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
