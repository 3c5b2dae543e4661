"""Math reward (docs/design.md §7): extract the last `\\boxed{}`, normalise, compare exactly, numerically, then by sympy.

    grade("... so $\\boxed{\\dfrac12}$.", "0.5")                           # Grade(1.0, True, '\\dfrac12')
    grade("<think>..</think> \\boxed{7}", "7", require_think_close=True)   # Grade(1.0, True, '7')
    grade("no think close \\boxed{7}", "7", require_think_close=True)      # Grade(0.0, False, None)

Safety: model text is never `eval`-ed. Symbolic comparison parses LaTeX with a hand-written recursive-descent
parser that builds sympy objects from a whitelist (numbers, + - * / ^, \\frac, \\sqrt, \\pi, \\infty, parentheses,
letters and Greek letters as symbols); it never calls `sympify`/`parse_expr` on strings. Sympy runs in a persistent
'spawn' worker process that is killed (SIGKILL) when a comparison exceeds its timeout, and replaced in the background
while a warm spare takes the next comparison, so a pathological answer such as `9^{9^{9^9}}` costs `timeout_s` and
cannot hang the trainer or slow the answers after it.
"""

from __future__ import annotations

import builtins
import multiprocessing
import queue
import re
import threading
import time
from fractions import Fraction
from typing import Callable, NamedTuple

# Longer answers are not answers; the cap also bounds the cost of extraction and normalisation.
_MAX_ANSWER_CHARS = 1_000
# Decimal exponents beyond this are left to the time-limited worker: 10**k with a huge k would hang the caller.
_MAX_FAST_EXPONENT = 400
# Parenthesis nesting bound of the LaTeX parser (keeps its recursion far from Python's limit).
_MAX_PARSE_DEPTH = 50
# Worker start-up (spawn, imports, sympy warm-up) is not charged to a comparison's timeout.
_WORKER_STARTUP_TIMEOUT_S = 120.0


class Grade(NamedTuple):
    reward: float
    formatted: bool
    extracted: str | None


# ----------------------------------------------------------------------------------------------------------------------
# Extraction.

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_FALLBACK_MARKERS = ("final answer is", "answer:")
_BOX_ARGUMENT_RE = re.compile(r"\s*(\{|[^\s$]*)")


def _last_box_start(text: str) -> int | None:
    """Index after the last `\\boxed`/`\\fbox` command (one not followed by a letter)."""
    best = None
    for command in _BOX_COMMANDS:
        end = len(text)
        # rfind walks backwards from `end` each time, so the loop is linear in len(text) overall.
        while (i := text.rfind(command, 0, end)) >= 0:
            after = i + len(command)
            if after == len(text) or not text[after].isalpha():
                best = max(best or 0, after)
                break
            end = i
    return best


def _braced(text: str, open_at: int) -> str | None:
    """Contents of the balanced group opening at text[open_at] == '{' (escaped `\\{`/`\\}` do not count); None if
    it does not close within _MAX_ANSWER_CHARS."""
    depth, i, end = 0, open_at, min(len(text), open_at + _MAX_ANSWER_CHARS + 2)
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
        i += 1
    return None


def _fallback_answer(text: str) -> str | None:
    lowered = text.lower()
    for marker in _FALLBACK_MARKERS:
        if (i := lowered.rfind(marker)) >= 0:
            line_end = text.find("\n", i)
            answer = text[i + len(marker):line_end if line_end >= 0 else len(text)]
            break
    else:
        last_line = text.rstrip()
        last_line = last_line[last_line.rfind("\n") + 1:]
        if "=" not in last_line:
            return None
        answer = last_line[last_line.rfind("=") + 1:]
    answer = answer.strip(" \t:").rstrip(".").strip("$ ").rstrip(".").strip()
    return answer or None


def extract_boxed(text: str, allow_fallback: bool = True) -> str | None:
    """The last `\\boxed{...}` / `\\fbox{...}` (balanced braces) or `\\boxed TOKEN`; None if absent, unclosed, empty
    or longer than 1,000 characters.

    Only when the text has no box command at all, and `allow_fallback`, the answer is taken from (first that applies):
    the rest of the line after the last "final answer is", else after the last "answer:" (both case-insensitive),
    else the text after the last "=" of the last non-empty line; `$`, a leading ':' and a trailing '.' are stripped.
    A malformed box gets no fallback: the model tried to box and failed. Linear time in len(text).
    """
    after = _last_box_start(text)
    if after is None:
        return _fallback_answer(text) if allow_fallback else None
    m = _BOX_ARGUMENT_RE.match(text, after)
    content = _braced(text, m.start(1)) if m.group(1) == "{" else m.group(1)
    if content is None or not content.strip() or len(content) > _MAX_ANSWER_CHARS:
        return None
    return content.strip()


# ----------------------------------------------------------------------------------------------------------------------
# Normalisation.

_UNITS = frozenset("""
    cm mm km m meter meters metre metres centimeter centimeters kilometer kilometers millimeter millimeters
    in inch inches ft foot feet yd yard yards mi mile miles mph kmh g gram grams kg kilogram kilograms mg lb lbs
    pound pounds oz ounce ounces s sec secs second seconds min mins minute minutes h hr hrs hour hours day days
    week weeks month months year years l liter liters litre litres ml cent cents dollar dollars unit units
    square sq cubic per degree degrees deg radian radians rad percent
""".split())
# Plain (un-\text-ed) trailing unit words: the short ones (m, g, s, in, ...) are too easily variables or words.
_PLAIN_UNITS = "|".join(sorted((u for u in _UNITS if len(u) > 2 or u in ("cm", "mm", "km", "kg", "ft", "lb")),
                               key=len, reverse=True))
_PLAIN_UNIT_RE = re.compile(rf"(?<=[\d}}).])\s*(?:(?:square|sq|cubic)\s+)?(?:{_PLAIN_UNITS})"
                            rf"(?:\s*(?:/|per)\s*(?:{_PLAIN_UNITS}))?(?:\^\{{?[23]\}}?)?\s*$", re.IGNORECASE)
_SHORT_UNIT_RE = re.compile(r"(?<=\d)\s+(?:m|g|s|h|l|in)(?:\^\{?[23]\}?)?\s*$")
_TEXT_RE = re.compile(r"\\(?:text|textnormal|mbox|mathrm|textrm|textbf|mathbf|operatorname)\s*\{([^{}]*)\}"
                      r"((?:\^\{?[23]\}?)?)")
_JOINER_RE = re.compile(r"\s*(?:\\text\{\s*(?:and|or)\s*\}|\s(?:and|or)\s)\s*")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
_SPACE_RE = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])|\s+")
_ASSIGNMENT_RE = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?(?:=|\\in(?![a-zA-Z]))")
_MIXED_RE = re.compile(r"(?<![\w}^_.\\])(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_VULGAR = {"\u00bd": (1, 2), "\u2153": (1, 3), "\u2154": (2, 3), "\u00bc": (1, 4), "\u00be": (3, 4),
           "\u2155": (1, 5), "\u2156": (2, 5), "\u2157": (3, 5), "\u2158": (4, 5), "\u2159": (1, 6),
           "\u215a": (5, 6), "\u2150": (1, 7), "\u215b": (1, 8), "\u215c": (3, 8), "\u215d": (5, 8),
           "\u215e": (7, 8), "\u2151": (1, 9), "\u2152": (1, 10)}
_UNICODE = {**{c: f"\\frac{{{n}}}{{{d}}}" for c, (n, d) in _VULGAR.items()}, "\u2212": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ", "\u03c0": "\\pi ",
            "\u221e": "\\infty ", "\u221a": "\\sqrt ", "\u2264": "\\le ", "\u2265": "\\ge "}
_REMOVED = ("\\displaystyle", "\\left.", "\\right.", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\qquad", "\\quad", "~",
            "\\$", "$", "\\%", "%")
_RENAMED = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\leq", "\\le"), ("\\geq", "\\ge"), ("\\neq", "\\ne"),
            ("{,}", ","))


_LABEL_RE = re.compile(r"(?<=[\d}])\s*\\text\s*\{\s*[a-zA-Z][a-zA-Z ]*\}\s*$")  # `5\text{ apples}`
_REPEATING_RE = re.compile(r"(\d*)\.(\d*)\\overline\{(\d+)\}")  # 0.1\overline{6} = 1/6


def _unwrap_text(m: re.Match) -> str:
    """Unit words go; other text stays, in lower case when it holds words (`\text{No solution}`), so that
    capitalisation does not matter; a single letter (a choice `\text{B}`) keeps its case."""
    words = [w for w in re.split(r"[\s/.]+", m.group(1).lower()) if w]
    if words and all(w in _UNITS for w in words):
        return ""
    text = m.group(1).lower() if re.search(r"[a-zA-Z]{2}", m.group(1)) else m.group(1)
    return text + m.group(2)


def _repeating(m: re.Match) -> str:
    """`1.2\\overline{34}` -> the exact fraction: 1.2 + 0.0343434... = (1234 - 12) / 990."""
    whole, fixed, cycle = m.group(1) or "0", m.group(2), m.group(3)
    with_cycle, without = int(whole + fixed + cycle), int(whole + fixed)
    den = (10 ** len(cycle) - 1) * 10 ** len(fixed)
    value = Fraction(with_cycle - without, den)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _strip_assignment(s: str) -> str:
    """`x=3` -> `3`, `\\theta=\\pi` -> `\\pi`, `x\\in[1,2]` -> `[1,2]`; equations with two `=` are kept."""
    m = _ASSIGNMENT_RE.match(s)
    if m is None or m.end() == len(s) or (m.group().endswith("=") and s.count("=") != 1):
        return s
    return s[m.end():]


def normalize(answer: str) -> str:
    """Canonical string form of a LaTeX answer, a leading `x=` / `x\\in` stripped."""
    return _strip_assignment(_canonical(answer))


def _canonical(answer: str) -> str:
    """Strips `$`, `\\left`/`\\right`, spacing commands, units, degrees, `%`, spaces and a trailing '.'; rewrites
    `\\dfrac`/`\\tfrac`, `\\frac12`, `\\sqrt2`, mixed numbers (3\\frac{1}{2} -> \\frac{7}{2}), `.5`, `1,000`, `(C)`."""
    s = answer.strip()
    if any(c in s for c in _BOX_COMMANDS) and (inner := extract_boxed(s, allow_fallback=False)) is not None:
        s = inner
    for old, new in _UNICODE.items():
        s = s.replace(old, new)
    s = _JOINER_RE.sub(",", s)
    s = _DEGREE_RE.sub("", s)
    for old in _REMOVED:
        s = s.replace(old, "")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    for old, new in _RENAMED:
        s = s.replace(old, new)
    s = _REPEATING_RE.sub(_repeating, s)
    if _LABEL_RE.search(s) and not _LABEL_RE.fullmatch(s):  # a number and its label: the label goes
        s = _LABEL_RE.sub("", s)
    s = _TEXT_RE.sub(_unwrap_text, s)
    s = _SHORT_UNIT_RE.sub("", _PLAIN_UNIT_RE.sub("", s))
    # One space survives only between a command and a letter (`\pi r`), where removing it would change the command.
    s = _SPACE_RE.sub(lambda m: m.group(1) + " " if m.group(1) else "", s).rstrip(".")
    s = re.sub(r"\\frac ?([a-zA-Z0-9])([a-zA-Z0-9])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac ?([a-zA-Z0-9])\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\} ?([a-zA-Z0-9])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt ?([a-zA-Z0-9])", r"\\sqrt{\1}", s)
    s = _MIXED_RE.sub(lambda m: _mixed_number(*map(int, m.groups())) or m.group(), s)
    s = re.sub(r"(?<!\d)\.(\d)", r"0.\1", s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if s.count("\\pm") == 1 and "," not in s:  # `\pm 2` -> `2,-2`, `1\pm\sqrt{2}` -> `1+\sqrt{2},1-\sqrt{2}`
        head, tail = s.split("\\pm")
        s = f"{tail},-{tail}" if not head else f"{head}+{tail},{head}-{tail}"
    if re.fullmatch(r"\([A-Ea-e]\)", s):
        s = s[1].upper()
    return s


def _mixed_number(whole: int, num: int, den: int) -> str | None:
    """3\\frac{1}{2} -> \\frac{7}{2}; None unless num/den is a proper fraction (else it is a product)."""
    if not 0 < num < den:
        return None
    return f"\\frac{{{whole * den + num}}}{{{den}}}"


# ----------------------------------------------------------------------------------------------------------------------
# Structure: intervals, tuples, sets and lists; scalars compared by a pluggable `eq`.

class _Undecided(Exception):
    """The fast comparison cannot settle a pair: sympy has to."""


_ScalarEq = Callable[[str, str], bool]


def _split_top(s: str) -> list[str]:
    """Split at commas outside any bracket."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _encloses(s: str) -> bool:
    """Whether s[0] is the bracket that closes at s[-1] (so `(1)+(2)` is not one bracketed group)."""
    depth = 0
    for i, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(s) - 1:
            return False
    return depth == 0


def _bracketed(s: str) -> tuple[str, list[str], str] | None:
    """`(a,b]` -> ('(', ['a', 'b'], ']'): an interval, point or tuple with at least two entries."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]" or not _encloses(s):
        return None
    items = _split_top(s[1:-1])
    return (s[0], items, s[-1]) if len(items) >= 2 else None


def _set_items(s: str) -> list[str]:
    if s.startswith("\\{") and s.endswith("\\}"):
        s = s[2:-2]
    return [_strip_assignment(item) for item in _split_top(s)]


def _match_unordered(preds: list, golds: list, eq: Callable) -> bool:
    if len(preds) != len(golds):
        return False
    unused = list(preds)
    for g in golds:
        hit = next((p for p in unused if eq(p, g)), None)
        if hit is None:
            return False
        unused.remove(hit)
    return True


def _compare(pred: str, gold: str, eq: _ScalarEq) -> bool:
    """Structured equivalence of normalised answers; scalars (and equations) are compared by `eq`."""
    if pred == gold:
        return True
    if "\\cup" in gold:
        return _match_unordered(pred.split("\\cup"), gold.split("\\cup"), lambda p, g: _compare(p, g, eq))
    if (g := _bracketed(gold)) is not None:
        p = _bracketed(pred)
        return (p is not None and (p[0], p[2], len(p[1])) == (g[0], g[2], len(g[1]))
                and all(eq(a, b) for a, b in zip(p[1], g[1])))
    golds = _set_items(gold)
    if len(golds) > 1 or gold.startswith("\\{"):
        return not pred.startswith("(") and _match_unordered(_set_items(pred), golds, eq)
    return len(_split_top(pred)) == 1 and eq(pred, gold)


_INT_RE = re.compile(r"[-+]?\d+")
_DECIMAL_RE = re.compile(r"[-+]?\d*\.\d+")
_SLASH_RE = re.compile(r"([-+]?)(\d+)/(\d+)")
_FRAC_RE = re.compile(r"([-+]?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_SCI_RE = re.compile(r"([-+]?\d+(?:\.\d+)?)(?:[eE]|\\times10\^|\\cdot10\^)\{?([-+]?\d+)\}?")


def _number(s: str) -> Fraction | None:
    """Exact value of a plain number: integer, decimal, a/b, \\frac{a}{b}, scientific notation; else None."""
    if _INT_RE.fullmatch(s) or _DECIMAL_RE.fullmatch(s):
        return Fraction(s)
    if (m := _SLASH_RE.fullmatch(s) or _FRAC_RE.fullmatch(s)) is not None:
        sign, num, den = m.group(1), int(m.group(2)), int(m.group(3))
        return None if den == 0 else Fraction(num, den) * (-1 if sign == "-" else 1)
    if (m := _SCI_RE.fullmatch(s)) is not None and abs(int(m.group(2))) <= _MAX_FAST_EXPONENT:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    return None


def _fast_eq(pred: str, gold: str) -> bool:
    """String or exact numeric equality; raises _Undecided when either side is not a plain number."""
    if pred == gold:
        return True
    p, g = _number(pred), _number(gold)
    if p is None or g is None:
        raise _Undecided
    return p == g


# ----------------------------------------------------------------------------------------------------------------------
# Sympy, in the worker process only.

_GREEK = frozenset("""alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho
    sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega""".split())
_TOKEN_RE = re.compile(r"\s*(?:(\d+\.?\d*|\.\d+)|\\([a-zA-Z]+)|([a-zA-Z+\-*/^_(){}\[\]]))")
_TIMES = ("*", "\\times", "\\cdot")
_DIVIDE = ("/", "\\div")
_ATOM_START = frozenset("({") | {"\\frac", "\\sqrt", "\\pi", "\\infty"} | {"\\" + g for g in _GREEK}


class _ParseError(Exception):
    pass


def _tokenize(s: str) -> list[str]:
    tokens, pos, s = [], 0, s.strip()
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise _ParseError(f"unexpected {s[pos]!r}")
        tokens.append(m.group(1) or (m.group(2) and "\\" + m.group(2)) or m.group(3))
        pos = m.end()
    return tokens


class _LatexParser:
    """Builds a sympy expression from whitelisted LaTeX tokens; anything else raises _ParseError.

    expr := term (("+" | "-") term)*;   term := unary (("*" | \\times | \\cdot | "/" | \\div) unary | power)*
    unary := ("+" | "-") unary | power;  power := atom ("^" arg)?;  arg := "{" expr "}" | one digit or letter | atom
    atom := number | letter ("_" subscript)? | \\pi | \\infty | \\greek | "(" expr ")" | "{" expr "}"
          | \\frac arg arg | \\sqrt ("[" expr "]")? arg
    """

    def __init__(self, text: str):
        import sympy  # The parent process never imports sympy.
        self.sp, self.tokens, self.pos, self.depth = sympy, _tokenize(text), 0, 0

    def parse(self):
        tree = self._expr()
        if self.pos != len(self.tokens):
            raise _ParseError(f"trailing {self.tokens[self.pos]!r}")
        return tree

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise _ParseError(f"expected {expected or 'a token'}, got {token!r}")
        self.pos += 1
        return token

    def _expr(self):
        self.depth += 1
        if self.depth > _MAX_PARSE_DEPTH:
            raise _ParseError("nested too deeply")
        tree = self._term()
        while (token := self._peek()) in ("+", "-"):
            self.pos += 1
            tree = tree + self._term() if token == "+" else tree - self._term()
        self.depth -= 1
        return tree

    def _term(self):
        tree = self._unary()
        while (token := self._peek()) is not None:
            if token in _TIMES or token in _DIVIDE:
                self.pos += 1
                tree = tree * self._unary() if token in _TIMES else tree / self._unary()
            elif token in _ATOM_START or token[0].isalnum() or token[0] == ".":
                tree = tree * self._power()
            else:
                break
        return tree

    def _unary(self):
        if (token := self._peek()) in ("+", "-"):
            self.pos += 1
            return self._unary() if token == "+" else -self._unary()
        return self._power()

    def _power(self):
        base = self._atom()
        if self._peek() == "^":
            self.pos += 1
            return self.sp.Pow(base, self._arg())
        return base

    def _arg(self):
        """A macro argument: a braced group or, as in TeX, a single character (`x^23` is x^2 * 3)."""
        token = self._peek()
        if token is not None and token[0].isdigit() and len(token) > 1:
            self.tokens[self.pos:self.pos + 1] = [token[0], token[1:]]
        return self._atom()

    def _atom(self):
        token = self._take()
        sp = self.sp
        if token[0].isdigit() or token[0] == ".":
            value = Fraction(token)
            return sp.Rational(value.numerator, value.denominator)
        if token in ("(", "{"):
            tree = self._expr()
            self._take(")" if token == "(" else "}")
            return tree
        if token == "\\frac":
            return self._arg() / self._arg()
        if token == "\\sqrt":
            if self._peek() == "[":
                self.pos += 1
                index = self._expr()
                self._take("]")
                return sp.root(self._arg(), index)
            return sp.sqrt(self._arg())
        if token == "\\pi":
            return sp.pi
        if token == "\\infty":
            return sp.oo
        if token[1:] in _GREEK:
            return sp.Symbol(token[1:])
        if token.isalpha() and len(token) == 1:
            if self._peek() == "_":
                self.pos += 1
                return sp.Symbol(f"{token}_{self._subscript()}")
            return sp.Symbol(token)
        raise _ParseError(f"unexpected {token!r}")

    def _subscript(self) -> str:
        """`1` or `{12}` or `{ab}`: alphanumeric, so a subscript only names a symbol."""
        braced = self._peek() == "{"
        self.pos += braced
        name = []
        while (token := self._take()) != "}" or not braced:
            if not token.isalnum():
                raise _ParseError(f"subscript {token!r}")
            name.append(token)
            if not braced:
                break
        return "".join(name)


def _is_zero(sp, d) -> bool:
    if d == 0:
        return True
    if d.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        return False
    return sp.simplify(d) == 0 or (not d.free_symbols and d.equals(0) is True)


def _sympy_eq(pred: str, gold: str) -> bool:
    """_fast_eq, then symbolic: expressions by simplify(p - g) == 0, equations up to a nonzero constant factor."""
    try:
        return _fast_eq(pred, gold)
    except _Undecided:
        pass
    import sympy as sp
    if "=" in pred or "=" in gold:
        sides = [s.split("=") for s in (pred, gold)]
        if any(len(s) != 2 for s in sides):
            return False
        (pl, pr), (gl, gr) = ([_LatexParser(x).parse() for x in s] for s in sides)
        dp, dg = pl - pr, gl - gr
        if _is_zero(sp, dp - dg) or _is_zero(sp, dp + dg):
            return True
        ratio = sp.simplify(dp / dg)
        return bool(ratio.is_number and ratio.is_finite and ratio != 0)
    p, g = _LatexParser(pred).parse(), _LatexParser(gold).parse()
    if p == g or _is_zero(sp, p - g):
        return True
    # e and i as the constants (e^{i\pi} = -1) when that is the only reading that makes the two agree and
    # the gold answer is a number: a gold answer in e or i as variables is compared as written above.
    constants = {sp.Symbol("e"): sp.E, sp.Symbol("i"): sp.I}
    if g.free_symbols - set(constants) or not p.free_symbols & set(constants):
        return False
    return _is_zero(sp, sp.expand_complex(p.subs(constants) - g.subs(constants)))


def _forbidden(*args, **kwargs):
    raise RuntimeError("eval is disabled in the math-grading worker")


def _serve(conn) -> None:
    """Worker loop: [(pred, gold), ...] -> whether any pair is equivalent; an error (e.g. a parse error) is False."""
    # Warm up first: sympy's lazy imports sympify their own constant strings (through eval) on first use. After
    # that eval is a tripwire: nothing may reach it, in particular no model text via sympify/parse_expr.
    _compare("\\frac{\\sqrt{2}}{2}", "\\sqrt{\\frac{1}{2}}", _sympy_eq)
    _compare("x^2+2x+1=0", "(x+1)^2=0", _sympy_eq)
    builtins.eval = _forbidden
    try:
        conn.send("ready")
        while True:
            pairs = conn.recv()
            conn.send(any(_safe_compare(pred, gold) for pred, gold in pairs))
    except (EOFError, OSError):  # the grading process is gone (e.g. exiting): so is this worker, quietly
        return


def _safe_compare(pred: str, gold: str) -> bool:
    try:
        return _compare(pred, gold, _sympy_eq)
    except Exception:  # noqa: BLE001 - a bad answer must cost a 0 reward, never the worker.
        return False


class _SympyWorker:
    """One 'spawn' process serving `_serve` (fork is unsafe with JAX's threads).

    As with any 'spawn' process, a calling script needs the `if __name__ == "__main__":` guard.
    """

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="dora_jax-math-sympy")
        self.proc.start()
        child.close()

    def wait_ready(self) -> bool:
        try:
            return self._conn.poll(_WORKER_STARTUP_TIMEOUT_S) and self._conn.recv() == "ready"
        except (EOFError, OSError):
            return False

    def ask(self, pairs: list[tuple[str, str]], timeout_s: float) -> bool | None:
        """The verdict, or None when the worker took longer than `timeout_s` or died."""
        try:
            self._conn.send(pairs)
            if self._conn.poll(timeout_s):
                return self._conn.recv()
        except (EOFError, OSError):  # the worker died (e.g. out of memory)
            pass
        return None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self._conn.close()


class _SympyPool:
    """Warm workers ready ahead of need. A comparison that runs past its timeout is answered False at once; its
    worker is SIGKILLed and replaced in the background while the next comparison takes a spare, so a call's wall
    time is its timeout plus a pipe round trip, whatever came before it (`benchmarks/grader.py` measures it)."""

    def __init__(self, size: int = 3):
        self._size = size
        self._ready: queue.Queue[_SympyWorker] = queue.Queue()
        self._lock = threading.Lock()
        self._live = 0  # workers ready, busy or starting
        self._failed = False

    def _top_up(self) -> None:
        with self._lock:
            missing, self._live = self._size - self._live, max(self._live, self._size)
        for _ in range(missing):
            threading.Thread(target=self._start_one, daemon=True, name="dora_jax-math-sympy-start").start()

    def _start_one(self) -> None:
        worker = _SympyWorker()
        if worker.wait_ready():
            self._ready.put(worker)
        else:
            worker.kill()
            with self._lock:
                self._live -= 1
            self._failed = True

    def _take(self) -> _SympyWorker:
        """A ready worker: at once, unless this is the first start-up or every spare was used up faster than
        replacements start."""
        deadline = time.monotonic() + _WORKER_STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                return self._ready.get(timeout=0.1)
            except queue.Empty:
                with self._lock:
                    if self._failed and self._live == 0:
                        break  # every start failed: no point waiting
        self._failed = False  # the next call tries again
        raise RuntimeError("the sympy grading worker did not start (a script that grades needs the "
                           "`if __name__ == '__main__':` guard, as 'spawn' processes re-import it)")

    def _retire(self, worker: _SympyWorker) -> None:
        worker.kill()
        with self._lock:
            self._live -= 1
        self._top_up()

    def equivalent(self, pairs: list[tuple[str, str]], timeout_s: float) -> bool:
        self._top_up()
        worker = self._take()
        verdict = worker.ask(pairs, timeout_s)
        if verdict is None:
            worker.proc.kill()  # stops the runaway computation now; the rest is off the caller's path
            threading.Thread(target=self._retire, args=(worker,), daemon=True, name="dora_jax-math-sympy-stop").start()
            return False
        self._ready.put(worker)
        return verdict

    def pids(self) -> list[int]:
        """Process ids of the ready workers (for tests)."""
        return [w.proc.pid for w in list(self._ready.queue)]


_WORKER = _SympyPool()
_UNSAFE_RE = re.compile(r"__|import|(?<!\\)lambda|eval|exec|['\"`;]")


def is_equivalent(pred: str, gold: str, timeout_s: float = 2.0) -> bool:
    """Whether answer `pred` equals `gold`: normalised strings, exact numbers, then sympy within `timeout_s`.

    A gold list (`1, 2`) or set (`\\{1,2\\}`) matches in any order; tuples and intervals (`(1,2]`) in order with the
    same brackets. `50\\%` matches 50 and 0.5. Inputs containing `__`, `import`, `lambda`, `eval`, `exec`, quotes or
    `;` never reach the parser.
    """
    if len(pred) > _MAX_ANSWER_CHARS:
        return False
    cp, cg = _canonical(pred), _canonical(gold)
    pairs = [(_strip_assignment(cp), _strip_assignment(cg))]
    if "=" in cp and "=" in cg:  # Also as equations: `x+y=1` vs `y=1-x`.
        pairs.append((cp, cg))
    undecided = []
    for p, g in pairs:
        try:
            if _compare(p, g, _fast_eq):
                return True
        except _Undecided:
            undecided.append((p, g))
    p, g = pairs[0]
    if ("%" in pred) != ("%" in gold) and (pn := _number(p)) is not None and (gn := _number(g)) is not None:
        return pn == gn * (100 if "%" in pred else Fraction(1, 100))
    undecided = [(p, g) for p, g in undecided if p and not _UNSAFE_RE.search(p)]
    return bool(undecided) and _WORKER.equivalent(undecided, timeout_s)


def grade(response: str, gold: str, *, require_think_close: bool = False, allow_fallback: bool = True,
          timeout_s: float = 2.0) -> Grade:
    """1/0 reward for a response against a gold answer, with a format flag and the extracted answer.

    With `require_think_close` (DeepScaleR), a response without `</think>` scores 0 and is unformatted, and only the
    text after the last `</think>` is graded.
    """
    if require_think_close:
        close = response.rfind("</think>")
        if close < 0:
            return Grade(0.0, False, None)
        response = response[close + len("</think>"):]
    extracted = extract_boxed(response, allow_fallback=allow_fallback)
    if extracted is None:
        return Grade(0.0, False, None)
    return Grade(float(is_equivalent(extracted, gold, timeout_s=timeout_s)), True, extracted)
