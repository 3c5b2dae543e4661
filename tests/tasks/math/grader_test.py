"""Tests for dora_jax.tasks.math.grader: a table of real-world verdicts, adversarial inputs, timeouts and no eval."""

import builtins
import inspect
import multiprocessing
import re
import threading
import time

import pytest

from dora_jax.tasks.math import grader as mr

REAL_EVAL, REAL_EXEC = builtins.eval, builtins.exec

TIMEOUT_S = 2.0
TEN_MB = 10_000_000

CASES = [
    # Fractions, \dfrac, mixed numbers, decimals.
    (r"So the probability is $\boxed{\frac{1}{2}}$.", "1/2", True),
    (r"\boxed{\dfrac{3}{4}}", r"\frac34", True),
    (r"\boxed{\tfrac{3}{4}}", "0.75", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", True),
    (r"\boxed{\frac{1}{3}}", "0.33", False),
    (r"\boxed{3\frac{1}{2}}", r"\frac{7}{2}", True),
    (r"\boxed{3 \frac12}", "3.5", True),
    (r"\boxed{-2\frac{1}{4}}", "-9/4", True),
    (r"\boxed{\frac{-1}{2}}", r"-\frac{1}{2}", True),
    (r"\boxed{2.50}", "2.5", True),
    (r"\boxed{.25}", r"\frac14", True),
    (r"\boxed{2.51}", "2.5", False),
    # Integers, signs, thousands separators.
    (r"\boxed{-7}", "-7", True),
    (r"\boxed{7}", "-7", False),
    ("\\boxed{\u22127}", "-7", True),
    (r"\boxed{1,000}", "1000", True),
    (r"\boxed{1{,}000{,}000}", "1000000", True),
    (r"\boxed{10,000}", "1000", False),
    # Percentages.
    (r"\boxed{25\%}", "25", True),
    (r"\boxed{25\%}", "0.25", True),
    (r"\boxed{25}", r"25\%", True),
    (r"\boxed{2.5\%}", "25", False),
    # Units, degrees, currency.
    (r"\boxed{12\text{ cm}}", "12", True),
    (r"\boxed{12 \text{ cm}^2}", "12", True),
    (r"\boxed{30^\circ}", "30", True),
    (r"\boxed{30^{\circ}}", r"30^\circ", True),
    (r"\boxed{45 \text{ degrees}}", "45", True),
    (r"\boxed{\$18.90}", "18.90", True),
    ("The final answer is 5 meters.", "5", True),
    # Radicals.
    (r"\boxed{\sqrt{2}}", "2^{1/2}", True),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{1}{2}\sqrt3", True),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}", True),
    (r"\boxed{\sqrt{3}}", "1.732", False),
    (r"\boxed{\sqrt[3]{8}}", "2", True),
    # Pi.
    (r"\boxed{2\pi}", r"2 \pi", True),
    (r"\boxed{\frac{\pi}{6}}", r"\pi/6", True),
    (r"\boxed{3.14}", r"\pi", False),
    (r"\boxed{\pi r^2}", r"r^2\pi", True),
    # Scientific notation.
    (r"\boxed{1.5\times10^{3}}", "1500", True),
    (r"\boxed{1.5 \times 10^3}", "1.5e3", True),
    (r"\boxed{1.5\times10^{4}}", "1500", False),
    (r"\boxed{10^{-2}}", "0.01", True),
    # Expressions and equations.
    (r"\boxed{2(x+1)}", "2x+2", True),
    (r"\boxed{(x+1)^2}", "x^2+2x+1", True),
    (r"\boxed{x^2+2x}", "x^2+2x+1", False),
    (r"\boxed{\frac{x}{2}}", r"\frac12 x", True),
    (r"\boxed{x=3}", "3", True),
    (r"\boxed{3}", "x=3", True),
    (r"\boxed{y = 2x + 1}", "y=2x+1", True),
    (r"\boxed{2x+1=y}", "y=2x+1", True),
    (r"\boxed{x+y=1}", "y=1-x", True),
    (r"\boxed{x+y=2}", "y=1-x", False),
    # Intervals.
    (r"\boxed{(1, 2]}", "(1,2]", True),
    (r"\boxed{[1, 2]}", "(1,2]", False),
    (r"\boxed{\left(-\infty, 3\right)}", r"(-\infty,3)", True),
    (r"\boxed{x \in \left(0, \frac{1}{2}\right)}", "(0,0.5)", True),
    (r"\boxed{(-\infty,1)\cup(2,\infty)}", r"(2,\infty)\cup(-\infty,1)", True),
    # Sets, tuples, multiple answers.
    (r"\boxed{2, 1}", "1, 2", True),
    (r"\boxed{\{3, -1\}}", r"\{-1,3\}", True),
    (r"\boxed{1, 2}", "1, 2, 3", False),
    (r"\boxed{x=1 \text{ or } x=-1}", "1,-1", True),
    (r"\boxed{(2, 1)}", "(1,2)", False),
    (r"\boxed{\left( 1, \frac{1}{2} \right)}", "(1,0.5)", True),
    # Multiple choice.
    (r"\boxed{\text{(C)}}", "C", True),
    (r"\boxed{B}", "C", False),
    # Extraction: box variants, last box wins, fallbacks.
    (r"\boxed 5", "5", True),
    (r"\fbox{42}", "42", True),
    (r"first \boxed{3}, then corrected to \boxed{4}", "4", True),
    (r"first \boxed{4}, then corrected to \boxed{3}", "4", False),
    (r"\boxed{{{1}}}", "1", True),
    ("Answer: 12", "12", True),
    ("So 3 + 4 = 7", "7", True),
    ("I am not sure.", "7", False),
    # Units and labels after a number.
    (r"\boxed{5\text{ apples}}", "5", True),
    (r"\boxed{12\text{ marbles}}", "12", True),
    (r"\boxed{12\text{ marbles}}", "13", False),
    (r"\boxed{3\text{ cm}^2}", "3", True),
    (r"\boxed{45^\circ}", "45", True),
    (r"\boxed{45^{\circ}}", "46", False),
    (r"\boxed{\$18.90}", "18.9", True),
    (r"\boxed{18.90\text{ dollars}}", "18.9", True),
    (r"\boxed{7 \text{ days}}", "7", True),
    (r"\boxed{6\text{ inches}}", "6", True),
    # Unicode fractions and symbols.
    ("\\boxed{\u00bd}", "0.5", True),
    ("\\boxed{\u00be}", r"\frac{3}{4}", True),
    ("\\boxed{2\u2153}", r"\frac{7}{3}", True),
    ("\\boxed{\u215b}", "0.125", True),
    ("\\boxed{\u00bc}", "1/3", False),
    ("\\boxed{3\u03c0}", r"3\pi", True),
    ("\\boxed{\u221a2}", r"\sqrt{2}", True),
    # Repeating decimals.
    (r"\boxed{0.\overline{3}}", r"\frac{1}{3}", True),
    (r"\boxed{0.\overline{6}}", "2/3", True),
    (r"\boxed{0.1\overline{6}}", r"\frac{1}{6}", True),
    (r"\boxed{0.\overline{142857}}", r"\frac{1}{7}", True),
    (r"\boxed{1.\overline{3}}", r"\frac{4}{3}", True),
    (r"\boxed{0.\overline{3}}", "0.3", False),
    (r"\boxed{0.\overline{9}}", "1", True),
    # Text answers, in any capitalisation.
    (r"\boxed{\text{No solution}}", r"\text{no solution}", True),
    (r"\boxed{\text{YES}}", r"\text{yes}", True),
    (r"\boxed{\text{yes}}", r"\text{no}", False),
    (r"\boxed{\text{even}}", r"\text{Even}", True),
    (r"\boxed{\text{B}}", "B", True),
    (r"\boxed{\text{(C)}}", "C", True),
    (r"\boxed{\text{(C)}}", "D", False),
    # Complex numbers and the constants e and i.
    (r"\boxed{e^{i\pi}}", "-1", True),
    (r"\boxed{i^2}", "-1", True),
    (r"\boxed{(1+i)^2}", "2i", True),
    (r"\boxed{3+4i}", "3+4i", True),
    (r"\boxed{3-4i}", "3+4i", False),
    (r"\boxed{\frac{1}{i}}", "-i", True),
    (r"\boxed{e^{0}}", "1", True),
    # More fractions, roots and pi.
    (r"\boxed{\frac{\pi}{2}}", r"\frac{1}{2}\pi", True),
    (r"\boxed{2\pi}", r"\pi", False),
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", True),
    (r"\boxed{\sqrt{18}}", r"2\sqrt{3}", False),
    (r"\boxed{\sqrt[3]{27}}", "3", True),
    (r"\boxed{\frac{\sqrt{3}}{3}}", r"\frac{1}{\sqrt{3}}", True),
    (r"\boxed{\frac{6}{8}}", "0.75", True),
    (r"\boxed{\frac{22}{7}}", r"\pi", False),
    (r"\boxed{2^{10}}", "1024", True),
    (r"\boxed{2^{10}}", "1000", False),
    (r"\boxed{10^{-2}}", "0.01", True),
    (r"\boxed{-\frac{3}{2}}", "-1.5", True),
    # Percentages.
    (r"\boxed{25\%}", "25", True),
    (r"\boxed{25\%}", "0.25", True),
    (r"\boxed{25\%}", "0.3", False),
    # Sets, tuples, intervals, lists.
    (r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}", True),
    (r"\boxed{(1, 2)}", "(2, 1)", False),
    (r"\boxed{[0, 1)}", "[0,1)", True),
    (r"\boxed{[0, 1]}", "[0,1)", False),
    (r"\boxed{x = 2 \text{ or } x = -2}", "-2, 2", True),
    (r"\boxed{2, -2}", r"\pm 2", True),
    (r"\boxed{1+\sqrt{2}, 1-\sqrt{2}}", r"1\pm\sqrt{2}", True),
    (r"\boxed{1+\sqrt{2}}", r"1\pm\sqrt{2}", False),
    # Expressions and equations.
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{x^2+1}", "(x+1)^2", False),
    (r"\boxed{y = 2x + 1}", "y=1+2x", True),
    (r"\boxed{2x - y = -1}", "y=2x+1", True),
    (r"\boxed{\frac{a+b}{2}}", r"\frac{b+a}{2}", True),
    (r"\boxed{ab}", "ba", True),
    (r"\boxed{a-b}", "b-a", False),
    # Malformed and adversarial.
    (r"\boxed{\frac{1}{2}", "1/2", False),
    (r"\boxed{}", "0", False),
    (r"\boxed{__import__('os').system('ls')}", "0", False),
    (r"\boxed{exec('print(1)')}", "0", False),
    (r"\boxed{().__class__.__bases__[0]}", "0", False),
    (r"\boxed{9^{9^{9^9}}}", "1", False),
    (r"\boxed{2^{2^{2^{2^{2}}}}}", "1", False),
    (r"\boxed{" + "(" * 400 + "1" + ")" * 400 + "}", "2", False),
    ("\\boxed{" + "{" * 100_000, "1", False),
    ("x" * TEN_MB + r" \boxed{42}", "42", True),
    (r"\boxed{" + "1" * TEN_MB + "}", "1", False),
]


@pytest.fixture(autouse=True)
def no_eval(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("model output must never be eval-ed or exec-ed")
    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    """The worker's one-off start-up is not a case's cost."""
    assert mr.is_equivalent(r"\sqrt{4}", "2")


def test_table_is_large_and_balanced():
    assert len(CASES) >= 150
    assert min(sum(expected for *_, expected in CASES), sum(not expected for *_, expected in CASES)) >= 20


@pytest.mark.parametrize("response, gold, expected", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_verdicts(response, gold, expected):
    # The wall time per call (timeout_s plus a round trip) is measured by benchmarks/grader.py, not here.
    result = mr.grade(response, gold, timeout_s=TIMEOUT_S)
    assert result.reward == float(expected), (response[:200], gold, result)


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{\{1, 2\}}$ done", r"\{1, 2\}"),
    (r"\boxed{a} and \fbox{b}", "b"),
    (r"\boxed{x} and then \boxed{", None),        # the last box is unclosed: no falling back to an earlier one
    (r"\boxed{ }", None),
    (r"\boxed", None),
    (r"\boxed 7$.", "7"),
    (r"\boxedtext{3}", None),                      # not a box command, and no fallback pattern
    ("The final answer is: $\\frac{1}{2}$.", r"\frac{1}{2}"),
    ("Answer: 12\nbecause 12 = 12", "12"),
    ("x = 2\ny = 5", "5"),
    ("no answer", None),
])
def test_extract_boxed(text, expected):
    assert mr.extract_boxed(text) == expected


def test_fallback_can_be_disabled():
    assert mr.extract_boxed("The final answer is 5", allow_fallback=False) is None
    assert mr.grade("Answer: 5", "5", allow_fallback=False) == mr.Grade(0.0, False, None)
    assert mr.grade("Answer: 5", "5") == mr.Grade(1.0, True, "5")


@pytest.mark.parametrize("answer, expected", [
    (r"\dfrac12", r"\frac{1}{2}"),
    (r"-3\frac12", r"-\frac{7}{2}"),
    (r"x^2\frac{1}{2}", r"x^2\frac{1}{2}"),       # not a mixed number
    ("1,000", "1000"),
    ("1,2", "1,2"),
    ("x = 3", "3"),
    (r"\left( 1, 2 \right]", "(1,2]"),
    (r"5 \text{cm}^2", "5"),
    (r"\text{x}^2", "x^2"),
    (r"2\pi r", r"2\pi r"),
    (r"x \in [1, 2)", "[1,2)"),
    (r"\$1,234.50", "1234.50"),
    (".5.", "0.5"),
])
def test_normalize(answer, expected):
    assert mr.normalize(answer) == expected


def test_extraction_is_linear_time():
    for text in ["{" * TEN_MB, "\\boxed{" * (TEN_MB // 7), "a = " * (TEN_MB // 4), "\\boxed" + "{" * TEN_MB + "}"]:
        start = time.monotonic()
        mr.grade(text, "1")
        assert time.monotonic() - start < 0.5


def test_think_close_required():
    assert mr.grade(r"<think>hmm</think> so \boxed{7}", "7", require_think_close=True) == mr.Grade(1.0, True, "7")
    assert mr.grade(r"\boxed{7} no think close", "7", require_think_close=True) == mr.Grade(0.0, False, None)
    # Only the text after </think> counts.
    assert mr.grade(r"<think>\boxed{7}</think> I give up", "7", require_think_close=True) == (0.0, False, None)
    assert mr.grade(r"<think>\boxed{7}</think> \boxed{8}", "7", require_think_close=True).reward == 0.0


def test_timeout_kills_the_worker_and_a_spare_answers_next():
    assert mr.is_equivalent(r"\sqrt{9}", "3")
    before = set(mr._WORKER.pids())
    assert not mr.is_equivalent("9^{9^{9^9}}", "1", timeout_s=0.5)
    killed = before - set(mr._WORKER.pids())
    assert len(killed) == 1  # the worker that ran it is gone from the ready ones ...
    assert mr.is_equivalent(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}")  # ... and a spare answers the next
    deadline = time.monotonic() + 120  # the replacement starts in the background (generous on a loaded machine)
    while len(mr._WORKER.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(mr._WORKER.pids()) == 3 and not killed & set(mr._WORKER.pids())


def test_unsafe_input_never_reaches_the_worker(monkeypatch):
    def unreachable(*args, **kwargs):
        raise AssertionError("unsafe text was sent to the worker")
    monkeypatch.setattr(mr._WORKER, "equivalent", unreachable)
    for answer in ["__import__('os').system('ls')", "exec('1')", "eval(x)", "lambda: x", "import os", '"x"']:
        assert not mr.is_equivalent(answer, "x")


def test_source_never_evaluates_text():
    source = inspect.getsource(mr)
    assert not re.search(r"(?<![\w.])(eval|exec|compile)\s*\(|\b(sympify|parse_expr|parse_latex|lambdify)\s*\(", source)
    assert "builtins.eval = _forbidden" in source


def test_worker_disables_eval_and_still_compares(monkeypatch):
    # _serve runs in this process here: sympy's own warm-up needs the real builtins (monkeypatch restores them).
    monkeypatch.setattr(builtins, "eval", REAL_EVAL)
    monkeypatch.setattr(builtins, "exec", REAL_EXEC)
    parent, child = multiprocessing.Pipe()
    server = threading.Thread(target=mr._serve, args=(child,))
    server.start()
    try:
        assert parent.recv() == "ready"
        assert builtins.eval is mr._forbidden
        parent.send([(r"\frac{\pi}{4}", r"\pi/4"), ("1", "2")])
        assert parent.recv() is True
        parent.send([("x+1", "x")])
        assert parent.recv() is False
    finally:
        parent.close()
        server.join(timeout=10)
    assert not server.is_alive()
