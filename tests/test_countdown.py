"""The built-in countdown family: questions, search traces, reference solutions, the exact verifier, lengths.
(conftest.py sets HF_HUB_OFFLINE=1.)"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from fractions import Fraction
from statistics import mean

import pytest

from varreason.errors import InputError
from varreason.tasks import TASKS, build_splits, get_task, score_problem
from varreason.tasks.base import Problem
from varreason.tasks.countdown import (
    BACK,
    COUNTDOWN_LEVELS,
    CountdownTask,
    expression_fault,
    parse_question,
    search,
)

LEVELS = sorted(COUNTDOWN_LEVELS)
STEP = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)((?: \d+)*)$")


@pytest.fixture(scope="module")
def splits():
    return build_splits(["countdown"], 150, 50, seed=5, difficulties=LEVELS)


def problem(question: str, answer: str = "") -> Problem:
    return Problem(id="p", question=question, answer=answer, trace="", task="countdown", difficulty=1)


def apply(op: str, a: int, b: int) -> int | None:
    if op == "/":
        return a // b if b and a % b == 0 else None
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def replay(p: Problem) -> list[tuple[int, ...]]:
    """Walk the trace as a depth-first search: every operation uses two numbers of the current state, its arithmetic
    is exact, the numbers left are written right, a `back` line returns to a state on the current path, and the
    last line reaches the target. Returns the states of the winning path."""
    numbers, target = parse_question(p.question)
    path = [tuple(numbers)]  # the states from the root to the current one
    lines = p.trace.split("\n")
    for k, line in enumerate(lines):
        if line.startswith(BACK + " "):
            state = tuple(int(n) for n in line.split()[1:])
            assert state in path[:-1], (line, path)
            path = path[: path.index(state) + 1]
            continue
        m = STEP.match(line)
        assert m, f"unexpected line {line!r} in\n{p.trace}"
        a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        assert apply(op, a, b) == r and r > 0 and a >= b, line
        left = list(path[-1])
        left.remove(a)
        left.remove(b)
        after = (*left, r)
        if r == target:
            assert k == len(lines) - 1, "the search stops at the target"
            return [*path, after]
        if len(after) == 1:
            assert not m.group(5), line
            continue
        assert tuple(int(n) for n in m.group(5).split()) == after, line
        path.append(after)
    raise AssertionError(f"the trace never reaches the target:\n{p.trace}")


# --- the generator -----------------------------------------------------------------------------------------------


def test_registered_and_mixed_with_the_arithmetic_families():
    assert TASKS["countdown"] is CountdownTask
    train, test = build_splits(["sum", "countdown", "product"], 60, 15, seed=1, difficulties=[1, 2])
    assert Counter(p.task for p in train) == {"sum": 20, "countdown": 20, "product": 20}
    assert all(score_problem(p, p.answer).correct for p in train + test)


def test_splits_are_deterministic_in_seed_and_disjoint(splits):
    again = build_splits(["countdown"], 150, 50, seed=5, difficulties=LEVELS)
    assert [p.to_row() for p in splits[0] + splits[1]] == [p.to_row() for p in again[0] + again[1]]
    other = build_splits(["countdown"], 150, 50, seed=6, difficulties=LEVELS)
    assert {p.question for p in other[0]} != {p.question for p in splits[0]}
    train, test = splits
    assert len(train) == 150 and len(test) == 50
    canon = lambda p: (tuple(sorted(parse_question(p.question)[0])), parse_question(p.question)[1])
    assert not {canon(p) for p in train} & {canon(p) for p in test}, "the same numbers in another order"
    assert len({canon(p) for p in train}) == len(train)


def test_a_question_does_not_depend_on_the_other_cells():
    """The level-5 questions are the same whether or not the other levels were drawn (the levels' node ranges are
    disjoint for the same count of numbers, so no question can be taken by another level first)."""
    alone = build_splits(["countdown"], 10, 4, seed=0, difficulties=[5])
    mixed = build_splits(["countdown"], 50, 20, seed=0, difficulties=LEVELS)
    for one, every in zip(alone, mixed):
        assert sorted(p.id for p in one) == sorted(p.id for p in every if p.difficulty == 5)


def test_problem_fields(splits):
    for p in splits[0] + splits[1]:
        numbers, target = parse_question(p.question)
        level = COUNTDOWN_LEVELS[p.difficulty]
        assert len(numbers) == level["count"] and target not in numbers
        assert all(level["values"][0] <= n <= level["values"][1] for n in numbers)
        assert level["target"][0] <= target <= level["target"][1]
        assert level["nodes"][0] <= int(p.meta["nodes"]) <= level["nodes"][1]
        assert p.task == "countdown" and p.style == "search" and p.id.startswith(f"countdown-{p.difficulty}-")


def test_every_trace_searches_correctly_and_ends_at_a_verified_answer(splits):
    for p in splits[0] + splits[1]:
        replay(p)
        assert score_problem(p, p.answer).correct, (p.question, p.answer)
        assert expression_fault(*parse_question(p.question), p.answer) is None


def test_some_traces_backtrack(splits):
    backtracking = [p for p in splits[0] if BACK in p.trace]
    assert len(backtracking) > len(splits[0]) / 3
    assert {p.difficulty for p in backtracking} >= {2, 3, 4, 5}


def test_the_solution_path_reaches_the_target(splits):
    for p in splits[0] + splits[1]:
        numbers, target = parse_question(p.question)
        pool = list(numbers)
        lines = p.meta["solution"].split("\n")
        for line in lines:
            a, op, b, r = STEP.match(line).group(1, 2, 3, 4)
            pool.remove(int(a))
            pool.remove(int(b))
            assert apply(op, int(a), int(b)) == int(r)
            pool.append(int(r))
        assert int(r) == target
        trace = p.trace.split("\n")
        assert trace[-1] == lines[-1] and all(any(t.split(" ")[0] == line for t in trace) for line in lines)


def test_difficulty_levels_are_ordered_by_search_length(splits):
    problems = splits[0] + splits[1]
    nodes = {d: mean(int(p.meta["nodes"]) for p in problems if p.difficulty == d) for d in LEVELS}
    assert [nodes[d] for d in LEVELS] == sorted(nodes.values()), nodes
    for easier, harder in itertools.pairwise(LEVELS):
        (lo, hi), (lo2, hi2) = COUNTDOWN_LEVELS[easier]["nodes"], COUNTDOWN_LEVELS[harder]["nodes"]
        assert lo <= lo2 and hi <= hi2
    assert COUNTDOWN_LEVELS[LEVELS[-1]]["count"] == max(level["count"] for level in COUNTDOWN_LEVELS.values())


def test_search_by_hand():
    lines, path = search((9, 4, 7), 19, max_nodes=20)
    assert lines == ["9+7=16 4 16", "16+4=20", "back 9 4 7", "9+4=13 7 13", "13+7=20", "back 9 4 7",
                     "7+4=11 9 11", "11+9=20", "back 9 4 7", "7*4=28 9 28", "28-9=19"]
    assert [(a, op, b, r) for _, _, op, a, b, r in path] == [(7, "*", 4, 28), (28, "-", 9, 19)]
    assert search((9, 4, 7), 19, max_nodes=7) == ([], [])  # found at node 8
    task = CountdownTask()
    p = task.build(((9, 4, 7), 19), 4, 0)
    assert (p.question, p.answer, p.meta["solution"], p.meta["nodes"]) == ("9 4 7 -> 19", "7*4-9", "7*4=28\n28-9=19", 8)


def test_answer_expressions_use_the_fewest_parentheses():
    task = CountdownTask()
    assert task.build(((7, 5, 3), 36), 4, 0).answer in ("(7+5)*3", "3*(7+5)")
    assert task.build(((10, 1, 7), 16), 1, 0).answer == "10+7-1"


# --- the verifier ------------------------------------------------------------------------------------------------

NOT_AN_EXPRESSION = "not an expression of integers and + - * / ( )"
CASES = [  # (answer, the fault or None when correct) for "25 5 3 7 -> 36"
    ("(7+5)*3", None),
    ("3*(5+7)", None),  # another order
    (" 3 * ( 7 + 5 ) ", None),  # spaces
    ("(7+5)\u00d73", None),  # the multiplication sign
    ("25+7+5-1", "1 is not given"),
    ("25+5+3+3", "3 used more often than given"),
    ("25+7+5", "equals 37, not 36"),
    ("(25+5)/7*3", "division not exact"),
    ("7/(5-5)", "division by zero"),  # reported before the count of numbers
    ("36", "36 is not given"),
    ("the answer is 36", NOT_AN_EXPRESSION),
    ("", "no expression"),
    ("   ", "no expression"),
    (None, "no expression"),
    ("-3+25+7+5+2", NOT_AN_EXPRESSION),  # a unary minus: -3 is not given
    ("(7+5)**1*3", NOT_AN_EXPRESSION),  # power
    ("25//5+7*3", NOT_AN_EXPRESSION),  # floor division
    ("2_5+7+5-1", NOT_AN_EXPRESSION),  # Python's digit separator
    ("7.0*5+1", NOT_AN_EXPRESSION),
    ("__import__('os')", NOT_AN_EXPRESSION),
    ("(7+5)*3)", NOT_AN_EXPRESSION),
    ("(7+5)*3=36", NOT_AN_EXPRESSION),
    ("(" * 300 + "7" + ")" * 300, NOT_AN_EXPRESSION),  # over MAX_ANSWER_CHARS: not parsed
    ("(" * 90 + "7+5" + ")" * 90 + "*3", None),  # deep but short: parsed
]


@pytest.mark.parametrize("answer, fault", CASES)
def test_verifier_by_hand(answer, fault):
    assert expression_fault((25, 5, 3, 7), 36, answer) == fault
    verdict = CountdownTask().check(problem("25 5 3 7 -> 36", "(7+5)*3"), answer)
    assert verdict.correct == (fault is None)
    expected = "correct" if fault is None else "unparseable_prediction" if fault in (NOT_AN_EXPRESSION,
                                                                                      "no expression") else "wrong"
    assert verdict.reason == expected


def test_verifier_edge_cases_by_hand():
    given = ((6, 4, 2, 2), 10)
    assert expression_fault(*given, "6+2+2") is None  # a number given twice may be used twice
    assert expression_fault(*given, "6+4") is None  # at most once: 2 and 2 are left over
    assert expression_fault(*given, "6+6-2") == "6 used more often than given"
    assert expression_fault(*given, "2-4+6+6") == "6 used more often than given"
    assert expression_fault((3, 5, 10), 8, "3-5+10") is None  # a negative intermediate is allowed
    assert expression_fault((7, 2, 4), 14, "7/2*4") == "division not exact"  # 14 as a fraction: not allowed
    assert expression_fault((7, 2, 4), 14, "7*4/2") is None
    assert expression_fault((7, 2, 4), 14, "7*2") is None
    assert expression_fault((7, 2, 4), 14, 14) == "14 is not given"
    assert expression_fault((7, 2, 4), 14, ["7*2"]) == "no expression"
    assert Fraction(7, 2) * 4 == 14  # what float / rational scoring (TinyZero, reasoning-gym) would accept


def test_check_never_raises_and_reads_the_question():
    task = CountdownTask()
    assert task.check(problem("25 5 3 7 -> 36"), "(7+5)*3").correct
    assert task.check(problem("garbage"), "(7+5)*3").reason == "unparseable_gold"
    for weird in (b"7*5", 3.5, object(), "\x00", "9" * 10_000, "1e3", "7.0*5"):
        assert not task.check(problem("25 5 3 7 -> 36"), weird).correct
    assert score_problem(problem("25 5 3 7 -> 36"), "3*(7+5)").correct


# --- configuration -----------------------------------------------------------------------------------------------


def test_bad_levels_are_input_errors():
    with pytest.raises(InputError, match="difficulty table"):
        CountdownTask(levels={1: {"count": 1, "values": (1, 9), "target": (10, 20), "nodes": (1, 2)}})
    with pytest.raises(InputError, match="difficulty table"):
        get_task("countdown", levels={1: {"count": 3}})
    with pytest.raises(InputError, match="no difficulty 9"):
        build_splits(["countdown"], 10, 2, seed=0, difficulties=[9])


def test_an_impossible_level_is_an_input_error(monkeypatch):
    monkeypatch.setattr(CountdownTask, "max_draws", 200)
    task = CountdownTask(levels={1: {"count": 2, "values": (1, 2), "target": (90, 99), "nodes": (1, 1)}})
    with pytest.raises(InputError, match="widen the level"):
        next(task.candidates(0, 1))


def test_token_lengths_fit_the_demo_with_the_tiny_tokenizer(splits):
    """The longest teacher completion (trace, answer section, eos) stays within the demo's max_completion_length,
    with the tokenizer `base` trains on these problems."""
    from varreason.config import load_config
    from varreason.models.tiny import train_tokenizer
    from varreason.stages.pi0 import tokenizer_corpus
    from varreason.templates import Templates

    cfg = load_config("countdown")
    train, test = splits
    tokenizer = train_tokenizer(tokenizer_corpus(cfg, train), cfg.format, cfg.model.vocab_size)
    templates = Templates(cfg.format, tokenizer)
    lengths = {d: [] for d in LEVELS}
    for p in train + test:
        ids = tokenizer(templates.completion(p.trace, p.answer), add_special_tokens=False)["input_ids"]
        lengths[p.difficulty].append(len(ids))
    assert max(max(v) for v in lengths.values()) <= cfg.sample.max_completion_length
    assert max(max(v) for v in lengths.values()) <= cfg.eval.max_completion_length
    assert mean(lengths[LEVELS[0]]) < mean(lengths[LEVELS[-1]])


def test_the_smoke_preset_takes_countdown():
    """`varreason run --config smoke --task.families '[countdown]'` passes the input checks (the full run, ~75 s on
    2 cores, was run by hand)."""
    from varreason.config import load_config
    from varreason.stages.pi0 import load_splits

    splits = load_splits(load_config("smoke", [("task.families", "[countdown]")]))
    assert (len(splits.train), len(splits.test), splits.dropped) == (96, 24, [])
    assert {p.task for p in splits.train} == {"countdown"}
