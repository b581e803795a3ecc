"""Built-in countdown: reach a target from given numbers with + - * /, a task where finding the answer takes search.

Issue 27: on sums and products the hint adds nothing (a forward computation is as easy without the answer); here
finding an expression takes search and having it makes a good trace easy to write. The question lists the numbers
and the target, `"25 5 3 7 -> 36"`; the answer is an expression over the numbers, `"(7+5)*3"` (25 is not needed).

**The rule**: each given number is used at most once (issue 27's rule, and the TV game's: the numbers left over
do not matter); + - * / on pairs; every intermediate result is a positive integer, so a division must be exact.
Exact integer division (Stream of Search's rule) rather than TinyZero's or reasoning-gym's float scoring because
(1) the teacher's trace writes every intermediate number, and a tiny model writes integers, not fractions;
(2) the verifier and the teacher then agree on which questions are solvable; (3) float closeness (`|x - target| < 1e-5`) is a tolerance a verifier should not need.

**The teacher** searches depth-first, as Stream of Search's traces do: at each state the candidate operations on
every pair (larger first: a+b, a-b, a*b, a/b when exact; no-ops such as x*1, x/1 and results equal to an operand or
zero are left out, and so are operations giving a state already listed) are tried closest to the target first
(SoS's heuristic order). One line per operation tried, and one line each time the search returns to a state:

    9 4 7 -> 19         the question (the prompt)
    9+7=16 4 16         an operation tried, then the numbers left (the new one last)
    16+4=20             two numbers left: only the closest result is written; it is not the target, so none is
    back 9 4 7          return to that state and try its next operation
    9+4=13 7 13
    13+7=20
    back 9 4 7
    7+4=11 9 11
    11+9=20
    back 9 4 7
    7*4=28 9 28
    28-9=19             the target: the search stops (the trace always ends with a line `...=target`)
                        answer 7*4-9; solution "7*4=28" / "28-9=19"; 8 nodes

With two numbers left, the operations are sorted by closeness, so if the closest result is not the target none is:
the teacher writes that one line and backtracks (a dead end). The answer is the winning path as one expression
with the fewest parentheses; the reference solution (`meta["solution"]`, the hint of `posterior.hint: solution`)
is that path, one operation a line. With the answer as the hint, q has the whole path in its prompt: that is the
premise issue 27 wants tested.

**Difficulty** = how many numbers and how long the search runs: `nodes`, the operations the teacher tries up to
and including the winning one (SoS's rating counts the same). A level draws numbers and a target, searches, and
keeps the question only when the search ends at the target after a number of nodes inside the level's range;
`COUNTDOWN_LEVELS` is module-level so it can be tuned. The canonical question is the sorted numbers and the target.

**The verifier** (`expression_fault`, `CountdownTask.check`) parses the answer with Python's `ast` restricted to non-negative integer
literals, + - * / and parentheses (nothing is evaluated but that tree), counts the literals against the given
numbers as a multiset (each at most once), and evaluates with `fractions.Fraction`: a division must come out whole,
and the value must equal the target. Negative intermediates are allowed (`3-5+10`): they make no question
solvable that was not (by induction on the tree, |value| is reachable with non-negative ones: |x+-y| is a sum or
larger-smaller, |x*y| = |x|*|y|, |x/y| = |x|/|y|), and refusing them would be pedantry. Anything else (text, `2**5`, `-3`, `1_0`, a division by
zero) is a wrong answer; it never raises.

Why not reasoning-gym's countdown: its generator draws 4-6 numbers and targets 100-999 from a random expression (no
search, no traces, too big for a tiny model), and its `score_answer` does not fit our rule: every number exactly
once, float division (`np.isclose`), and sympy's `parse_expr`, which `eval`s the model's text.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import random
import re
from collections.abc import Iterator
from fractions import Fraction
from itertools import combinations

from varreason.errors import InputError
from varreason.eval.verify import Verdict
from varreason.tasks.base import Problem, ProceduralTask

# difficulty -> generator parameters: how many numbers, each drawn from `values`, a target from `target`, and the
# range of search nodes (operations the teacher tries, the winning one included) a kept question needs.
COUNTDOWN_LEVELS: dict[int, dict] = {
    1: {"count": 3, "values": (1, 20), "target": (10, 99), "nodes": (1, 2)},
    2: {"count": 3, "values": (1, 20), "target": (10, 99), "nodes": (3, 6)},
    3: {"count": 4, "values": (1, 20), "target": (10, 99), "nodes": (4, 8)},
    4: {"count": 3, "values": (1, 20), "target": (10, 99), "nodes": (7, 12)},
    5: {"count": 4, "values": (1, 20), "target": (10, 99), "nodes": (9, 13)},
}
BACK = "back"  # the word of a line that returns to an earlier state
ARROW = "->"  # between the numbers and the target in a question
MAX_ANSWER_CHARS = 200  # a longer answer is wrong without being parsed
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


# --- the search --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)  # states recur across draws: the generator calls this ~250 000 times
def operations(numbers: tuple[int, ...], target: int) -> tuple[tuple[int, int, str, int, tuple[int, ...]], ...]:
    """Every useful operation on a pair of `numbers` as (i, j, op, result, numbers after), closest to the target
    first (ties in the order generated). Larger operand first; no zero, no result equal to an operand (x*1, x/1,
    10-5: the same as dropping a number), no state listed twice (2+2 and 2*2)."""
    found, seen = [], set()
    for i, j in combinations(range(len(numbers)), 2):
        if numbers[i] < numbers[j]:
            i, j = j, i
        a, b = numbers[i], numbers[j]
        results = [("+", a + b), ("-", a - b), ("*", a * b)] + ([("/", a // b)] if a % b == 0 else [])
        rest = tuple(n for k, n in enumerate(numbers) if k not in (i, j))
        for op, r in results:
            after = (*rest, r)
            if r <= 0 or r in (a, b) or tuple(sorted(after)) in seen:
                continue
            seen.add(tuple(sorted(after)))
            found.append((i, j, op, r, after))
    return tuple(sorted(found, key=lambda o: abs(o[3] - target)))


Step = tuple[int, int, str, int, int, int]  # (i, j, op, a, b, result): a op b on the state's numbers i and j


def search(numbers: tuple[int, ...], target: int, max_nodes: int) -> tuple[list[str], list[Step]]:
    """The teacher's depth-first search: (trace lines, winning path), or ([], []) when the target is not reached
    within `max_nodes` operations tried."""
    lines: list[str] = []
    nodes = 0

    def visit(state: tuple[int, ...], path: list[Step]) -> list[Step] | None:
        nonlocal nodes
        options = operations(state, target)
        if len(state) == 2:
            options = options[:1]  # sorted by closeness: if the closest is not the target, none is
        for k, (i, j, op, r, after) in enumerate(options):
            if nodes >= max_nodes:
                return None
            nodes += 1
            step, tried = (i, j, op, state[i], state[j], r), f"{state[i]}{op}{state[j]}={r}"
            if r == target:
                lines.append(tried)
                return [*path, step]
            if len(after) == 1:
                lines.append(tried)
                continue
            lines.append(f"{tried} {' '.join(map(str, after))}")
            found = visit(after, [*path, step])
            if found:
                return found
            if nodes < max_nodes and k + 1 < len(options):
                lines.append(f"{BACK} {' '.join(map(str, state))}")
        return None

    path = visit(tuple(numbers), [])
    return (lines, path) if path else ([], [])


def count_nodes(trace: str) -> int:
    """Operations tried in a teacher trace (every line but the `back` lines)."""
    return sum(not line.startswith(BACK) for line in trace.split("\n"))


def expression(numbers: tuple[int, ...], path: list[Step]) -> str:
    """The winning path as one expression with the fewest parentheses: ((7+5)*3 for 7+5=12, 12*3=36)."""
    items = [(str(n), 3) for n in numbers]  # (text, precedence); a literal binds tightest
    for i, j, op, _, _, _ in path:
        (left, lp), (right, rp), prec = items[i], items[j], PRECEDENCE[op]
        left = f"({left})" if lp < prec else left
        right = f"({right})" if rp < prec or (rp == prec and op in "-/") else right
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [(f"{left}{op}{right}", prec)]
    return items[-1][0]


def solution(path: list[Step]) -> str:
    """The reference solution: the winning operations, one a line (7+5=12 / 12*3=36)."""
    return "\n".join(f"{a}{op}{b}={r}" for _, _, op, a, b, r in path)


# --- the verifier ------------------------------------------------------------------------------------------------

_QUESTION = re.compile(rf"\s*(\d+(?:\s+\d+)*)\s*{ARROW}\s*(\d+)\s*")
_ALLOWED = re.compile(r"[0-9+\-*/()\s]+")
_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def parse_question(question: str) -> tuple[tuple[int, ...], int] | None:
    """(numbers, target) of a countdown question ("25 5 3 7 -> 36"), or None."""
    m = _QUESTION.fullmatch(question or "")
    return (tuple(int(n) for n in m.group(1).split()), int(m.group(2))) if m else None


def _value(node: ast.AST, used: list[int]) -> Fraction:
    """The exact value of a parsed expression restricted to integer literals and + - * /; the literals go to
    `used`. A non-whole division or anything else raises ValueError (ZeroDivisionError for / 0)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        a, b = _value(node.left, used), _value(node.right, used)
        op = _OPERATORS[type(node.op)]
        if op == "/":
            if (a / b).denominator != 1:
                raise ValueError("division not exact")
            return a / b
        return a + b if op == "+" else a - b if op == "-" else a * b
    raise ValueError(f"not allowed: {type(node).__name__}")


def expression_fault(numbers: tuple[int, ...], target: int, answer: object) -> str | None:
    """Why `answer` does not reach `target` from `numbers` (each at most once, exact division), or None when it
    does. Never raises."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        return "no expression"
    text = answer.replace("\u00d7", "*").replace("\u00f7", "/").replace("\u2212", "-").strip()
    if len(text) > MAX_ANSWER_CHARS or not _ALLOWED.fullmatch(text):
        return "not an expression of integers and + - * / ( )"
    used: list[int] = []
    try:
        value = _value(ast.parse(text, mode="eval").body, used)
    except ZeroDivisionError:
        return "division by zero"
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return str(exc) if str(exc) == "division not exact" else "not an expression of integers and + - * / ( )"
    left = list(numbers)
    for n in used:
        if n not in left:
            return f"{n} is not given" if n not in numbers else f"{n} used more often than given"
        left.remove(n)
    return None if value == target else f"equals {value}, not {target}"


def canonical_key(numbers: tuple[int, ...], target: int) -> str:
    """What "the same question" means: the numbers in any order, and the target."""
    return f"countdown:{'+'.join(map(str, sorted(numbers)))}->{target}"


# --- the family --------------------------------------------------------------------------------------------------


class CountdownTask(ProceduralTask):
    """Countdown questions with depth-first search traces; difficulty = numbers and search nodes (COUNTDOWN_LEVELS)."""

    name = "countdown"
    max_draws = 200_000  # draws without a kept question before a level is called impossible

    def __init__(self, style_mix: dict[str, float] | None = None, levels: dict[int, dict] | None = None):
        """`style_mix` is accepted as every built-in family's is, and unused: the teacher has one style, search."""
        try:
            self.levels = {int(k): self._level(v) for k, v in (levels or COUNTDOWN_LEVELS).items()}
        except (TypeError, ValueError, KeyError) as exc:
            raise InputError(f"bad difficulty table for 'countdown': {levels!r} ({type(exc).__name__}: {exc})",
                             field="levels") from None

    @staticmethod
    def _level(level: dict) -> dict:
        count, (vlo, vhi), (tlo, thi), (nlo, nhi) = level["count"], level["values"], level["target"], level["nodes"]
        if not (isinstance(count, int) and count >= 2 and 1 <= vlo <= vhi and 1 <= tlo <= thi and 1 <= nlo <= nhi):
            raise ValueError("need count >= 2 and ranges (lo, hi) with 1 <= lo <= hi for values, target, nodes")
        return {"count": count, "values": (vlo, vhi), "target": (tlo, thi), "nodes": (nlo, nhi)}

    def draw(self, rng: random.Random, difficulty: int) -> tuple[tuple[int, ...], int] | None:
        """Numbers, and a target made from them by 1 to count-1 random operations (so it is reachable: drawing
        targets at random wastes most searches on unsolvable questions); None when it falls outside the level's
        target range or is one of the numbers."""
        level = self.levels[difficulty]
        numbers = tuple(rng.randint(*level["values"]) for _ in range(level["count"]))
        state, result = numbers, None
        for _ in range(rng.randint(1, len(numbers) - 1)):
            options = operations(state, 0)
            if not options:
                break
            _, _, _, result, state = rng.choice(options)
        lo, hi = level["target"]
        return (numbers, result) if result is not None and lo <= result <= hi and result not in numbers else None

    def candidates(self, seed: int, difficulty: int) -> Iterator[tuple[str, tuple[tuple[int, ...], int]]]:
        """Questions whose search reaches the target within the level's nodes; a target among the numbers is
        skipped (no search)."""
        self.check_difficulty(difficulty)
        rng = random.Random(f"{seed}:{self.name}:{difficulty}")
        lo, hi = self.levels[difficulty]["nodes"]
        misses = 0
        while True:
            drawn = self.draw(rng, difficulty)
            lines, path = search(*drawn, hi) if drawn else ([], [])
            if path and count_nodes("\n".join(lines)) >= lo:
                misses = 0
                yield canonical_key(*drawn), drawn
                continue
            misses += 1
            if misses >= self.max_draws:
                raise InputError(f"task 'countdown' difficulty {difficulty}: no question in {self.max_draws} draws "
                                 f"reaches its target within {lo}-{hi} search nodes; widen the level", field="levels")

    def build(self, payload: tuple[tuple[int, ...], int], difficulty: int, seed: int) -> Problem:
        numbers, target = payload
        lines, path = search(numbers, target, self.levels[difficulty]["nodes"][1])
        key = canonical_key(numbers, target)
        return Problem(
            id=f"{self.name}-{difficulty}-{hashlib.sha1(key.encode()).hexdigest()[:10]}",
            question=f"{' '.join(map(str, numbers))} {ARROW} {target}", answer=expression(numbers, path),
            trace="\n".join(lines), task=self.name, difficulty=difficulty, style="search",
            meta={"numbers": ",".join(map(str, numbers)), "target": target, "nodes": count_nodes("\n".join(lines)),
                  "solution": solution(path)},
        )

    def check(self, problem: Problem, predicted_answer: object) -> Verdict:
        """The numbers and target are read from the question (a problem read back from Parquet has them too)."""
        try:
            given = parse_question(problem.question)
            if given is None:
                return Verdict(False, "unparseable_gold")
            fault = expression_fault(*given, predicted_answer)
        except Exception as exc:  # noqa: BLE001 - a verifier never raises
            return Verdict(False, f"error: {type(exc).__name__}: {exc}")
        if fault is None:
            return Verdict(True, "correct")
        return Verdict(False, "unparseable_prediction" if fault.startswith(("no expr", "not an")) else "wrong")
