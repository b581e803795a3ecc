"""The built-in arithmetic suite (questions, teacher traces, splits, scoring) and the user-data loader."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from statistics import mean

import pytest

from varreason import tasks
from varreason.errors import InputError
from varreason.tasks import arithmetic, build_splits, fill_cells, get_task, load_user_problems, score_problem
from varreason.tasks.arithmetic import CORRECTION_MARKER, PRODUCT_LEVELS, SUM_LEVELS, ProductTask, SumTask
from varreason.tasks.base import Problem

LEVELS = [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def splits():
    return build_splits(["sum", "product"], 2000, 400, seed=7, difficulties=LEVELS)


def operands(problem: Problem) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", problem.question)]


def true_value(problem: Problem) -> int:
    ops = operands(problem)
    if problem.task == "sum":
        return sum(ops)
    return ops[0] * ops[1]


# --- an independent checker of the trace format ------------------------------------------------------------------

STEP = re.compile(r"^(?:(wait) )?([0-9+*]+)=(\d+)(?: (\d+))?$")


def evaluate(expr: str) -> int:
    """+ and * on non-negative integers, * binding tighter (no eval)."""
    total = 0
    for term in expr.split("+"):
        value = 1
        for factor in term.split("*"):
            value *= int(factor)
        total += value
    return total


def check_equations(trace: str, allow_slips: int = 0) -> int:
    """Every `expr=value` line is right, except up to `allow_slips` lines each directly followed by a `wait` line
    redoing the same expression correctly. Returns the number of slips seen."""
    lines = trace.split("\n")
    slips = 0
    for i, line in enumerate(lines):
        m = STEP.match(line)
        if not m:
            assert re.fullmatch(r"\d+([+*]\d+)*", line), f"unexpected line {line!r} in\n{trace}"
            continue
        if evaluate(m.group(2)) != int(m.group(3)):
            nxt = STEP.match(lines[i + 1]) if i + 1 < len(lines) else None
            assert nxt and nxt.group(1) == CORRECTION_MARKER and nxt.group(2) == m.group(2), trace
            assert evaluate(nxt.group(2)) == int(nxt.group(3)), trace
            slips += 1
    assert slips <= allow_slips, trace
    return slips


def final_number(trace: str) -> int:
    return int(re.findall(r"\d+", trace.split("\n")[-1])[-1])


def careful_lines(trace: str) -> list[str]:
    """A corrected trace with its slip line and the `wait ` word removed is a careful trace."""
    lines = trace.split("\n")
    out = []
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and lines[i + 1].startswith(CORRECTION_MARKER + " "):
            continue
        out.append(line.removeprefix(CORRECTION_MARKER + " "))
    return out


def check_column_addition(terms: list[int], lines: list[str]) -> int:
    """Lines of a column addition of `terms`: each addend list is the carry then the column's digits, the running
    result grows by the column's digit, and a final bare line brings the rest down. Returns the result."""
    digits = [str(t)[::-1] for t in terms]
    carry, running = 0, ""
    for col, line in enumerate(lines):
        if re.fullmatch(r"\d+", line):  # bring-down: the rest of the one remaining term
            left = [d for d in digits if col < len(d)]
            assert carry == 0 and len(left) == 1 and line == left[0][col:][::-1] + running
            return int(line)
        m = STEP.match(line)
        assert m and m.group(4), line
        addends = [int(x) for x in m.group(2).split("+")]
        expected = ([carry] if carry else []) + [int(d[col]) for d in digits if col < len(d)]
        assert addends == expected, (terms, line)
        value = int(m.group(3))
        assert value == sum(addends)
        last = col == max(len(d) for d in digits) - 1
        running = (str(value) if last else str(value % 10)) + running
        assert m.group(4) == running, line
        carry = value // 10
    return int(running)


def check_careful(problem: Problem, lines: list[str]) -> None:
    ops = operands(problem)
    if problem.task == "sum":
        assert check_column_addition(ops, lines) == sum(ops)
        return
    a, b = ops
    i, partials = 0, []
    for j, ch in enumerate(str(b)[::-1]):  # one block per multiplier digit, units first
        d = int(ch)
        if d <= 1:
            assert lines[i] == f"{a}*{d}={a * d}"
            i += 1
        else:
            assert lines[i] == f"{a}*{d}"
            i += 1
            carry, running = 0, ""
            for k, x in enumerate(str(a)[::-1]):
                m = STEP.match(lines[i])
                assert m.group(2) == f"{x}*{d}" + (f"+{carry}" if carry else ""), lines[i]
                value = int(m.group(3))
                assert value == int(x) * d + carry
                running = (str(value) if k == len(str(a)) - 1 else str(value % 10)) + running
                assert m.group(4) == running
                carry = value // 10
                i += 1
            assert int(running) == a * d
        if d:
            partials.append(a * d * 10**j)
    if len(str(b)) > 1:
        assert lines[i] == "+".join(map(str, partials))
        if len(partials) > 1:
            assert check_column_addition(partials, lines[i + 1:]) == a * b
        else:
            assert i == len(lines) - 1
    else:
        assert i == len(lines)


# --- splits ------------------------------------------------------------------------------------------------------


def test_splits_are_deterministic_in_seed(splits):
    again = build_splits(["sum", "product"], 2000, 400, seed=7, difficulties=LEVELS)
    assert [p.to_row() for p in splits[0]] == [p.to_row() for p in again[0]]
    assert [p.to_row() for p in splits[1]] == [p.to_row() for p in again[1]]
    other = build_splits(["sum", "product"], 2000, 400, seed=8, difficulties=LEVELS)
    assert {p.question for p in other[0]} != {p.question for p in splits[0]}


def test_splits_are_disjoint_balanced_and_deduplicated(splits):
    train, test = splits
    assert len(train) == 2000 and len(test) == 400
    assert not {p.question for p in train} & {p.question for p in test}
    # disjoint even up to the order of the terms
    canon = lambda p: (p.task, tuple(sorted(operands(p))))
    assert not {canon(p) for p in train} & {canon(p) for p in test}
    for split in (train, test):
        assert len({canon(p) for p in split}) == len(split)
        assert len({p.id for p in split}) == len(split)
    cells = Counter((p.task, p.difficulty) for p in train)
    assert set(cells) == {(t, d) for t in ("sum", "product") for d in LEVELS}
    assert set(cells.values()) == {200}
    assert set(Counter((p.task, p.difficulty) for p in test).values()) == {40}
    # a different test size leaves no test question in the train split either
    train2, test2 = build_splits(["sum"], 300, 50, seed=7, difficulties=[1])
    assert not {p.question for p in train2} & {p.question for p in test2}


def test_problem_fields(splits):
    for p in splits[0] + splits[1]:
        assert p.answer == str(true_value(p))
        assert p.task in ("sum", "product") and p.difficulty in LEVELS
        assert p.style in ("careful", "terse", "corrected")
        assert p.id.startswith(f"{p.task}-{p.difficulty}-")
        assert p.question.endswith("=?") and "\n" not in p.question
        assert p.trace and "<" not in p.trace


def test_every_teacher_trace_ends_with_the_right_answer(splits):
    for p in splits[0] + splits[1]:  # the test split carries teacher traces too
        assert final_number(p.trace) == true_value(p), p
        check_equations(p.trace, allow_slips=1 if p.style == "corrected" else 0)


def test_careful_traces_are_right_step_by_step(splits):
    careful = [p for p in splits[0] + splits[1] if p.style == "careful"]
    assert len(careful) > 500
    for p in careful:
        assert check_equations(p.trace) == 0
        check_careful(p, p.trace.split("\n"))


def test_corrected_traces_show_one_slip_and_its_correction(splits):
    corrected = [p for p in splits[0] if p.style == "corrected"]
    assert corrected
    for p in corrected:
        assert f"\n{CORRECTION_MARKER} " in p.trace
        assert check_equations(p.trace, allow_slips=1) == 1
        check_careful(p, careful_lines(p.trace))  # the rest is a careful trace


def test_terse_traces_skip_steps(splits):
    for task in ("sum", "product"):
        by_style = {s: [len(p.trace.split("\n")) for p in splits[0] if p.task == task and p.style == s]
                    for s in ("careful", "terse")}
        assert mean(by_style["terse"]) < mean(by_style["careful"]) / 1.5
    for p in splits[0]:
        if p.style == "terse":
            assert CORRECTION_MARKER not in p.trace and all("=" in line for line in p.trace.split("\n"))


def test_difficulty_levels_grow(splits):
    train = splits[0]

    def per_level(task, size):
        return [[size(operands(p)) for p in train if p.task == task and p.difficulty == d] for d in LEVELS]

    increasing = lambda xs: all(x < y for x, y in itertools.pairwise(xs))
    # sums: more digits in all (more terms or longer ones)
    assert increasing([mean(v) for v in per_level("sum", lambda ops: sum(len(str(x)) for x in ops))])
    # products: more single-digit multiplications, and the multiplier never shorter
    assert increasing([mean(v) for v in per_level("product", lambda ops: len(str(ops[0])) * len(str(ops[1])))])
    shorter = [max(v) for v in per_level("product", lambda ops: min(len(str(x)) for x in ops))]
    assert all(x <= y for x, y in itertools.pairwise(shorter))
    for d, level in PRODUCT_LEVELS.items():
        assert {tuple(len(str(x)) for x in ops) for ops in per_level("product", tuple)[d - 1]} == {level["digits"]}
    for task in ("sum", "product"):
        careful = [mean(len(p.trace) for p in train if p.task == task and p.difficulty == d and p.style == "careful")
                   for d in LEVELS]
        # easiest shortest, hardest longest (sum levels 2 and 3 trade a digit for a term: about equal length)
        assert careful[0] == min(careful) and careful[-1] == max(careful), (task, careful)
        assert careful[-1] < 200  # the hardest careful traces stay compact (chars ~ tokens)
    assert all(SUM_LEVELS[d]["terms"] <= SUM_LEVELS[d + 1]["terms"] for d in LEVELS[:-1])


def test_style_mix_is_respected():
    train, _ = build_splits(["sum", "product"], 3000, 0, seed=1, difficulties=LEVELS)
    share = {s: n / len(train) for s, n in Counter(p.style for p in train).items()}
    assert share["careful"] == pytest.approx(0.5, abs=0.04)
    assert share["terse"] == pytest.approx(0.35, abs=0.04)
    assert share["corrected"] == pytest.approx(0.15, abs=0.03)
    only, _ = build_splits(["sum"], 100, 0, seed=1, difficulties=[3], style_mix={"careful": 1.0})
    assert {p.style for p in only} == {"careful"}
    mixed, _ = build_splits(["sum"], 100, 0, seed=1, difficulties=[3], style_mix={"terse": 2, "corrected": 2})
    assert {p.style for p in mixed} == {"terse", "corrected"}
    # the style mix changes traces, not questions
    assert [p.question for p in only] == [p.question for p in mixed]
    for bad in ({"sloppy": 1.0}, {"careful": -1.0}, {"careful": 0.0}):
        with pytest.raises(InputError) as err:
            build_splits(["sum"], 10, 0, seed=1, difficulties=[1], style_mix=bad)
        assert err.value.field == "style_mix"


def test_bad_requests_are_input_errors():
    with pytest.raises(InputError) as err:
        get_task("division")
    assert err.value.field == "task"
    with pytest.raises(InputError) as err:
        build_splits(["sum"], 10, 10, seed=0, difficulties=[9])
    assert err.value.field == "difficulties"
    with pytest.raises(InputError):
        build_splits(["sum"], -1, 10, seed=0, difficulties=[1])
    for bad in ({1: {"digits": (2, 1)}}, {1: {"terms": 3}}, {1: {"terms": 3, "digits": (3, 2)}}, {"x": {}}):
        with pytest.raises(InputError) as err:
            get_task("sum", levels=bad)
        assert err.value.field == "levels"
    assert get_task("sum", levels={"2": {"terms": 3, "digits": [1, 1]}}).levels == {2: {"terms": 3, "digits": [1, 1]}}
    tiny = ProductTask(levels={1: {"digits": (1, 1)}})  # only 36 distinct questions exist
    with pytest.raises(InputError, match="distinct questions"):
        fill_cells([tiny], 100, 0, 0, [1])


def test_one_task_fills_balanced_cells_deterministically():
    problems, none = fill_cells([SumTask()], 20, 0, seed=3, difficulties=[1, 2])
    assert none == [] and len(problems) == 20 and Counter(p.difficulty for p in problems) == {1: 10, 2: 10}
    assert [p.to_row() for p in problems] == [p.to_row() for p in fill_cells([SumTask()], 20, 0, 3, [1, 2])[0]]


# --- scoring -----------------------------------------------------------------------------------------------------


def make(task: str, question: str, answer: str) -> Problem:
    return Problem(id="x", question=question, answer=answer, trace="t", task=task, difficulty=1)


def test_scoring_of_builtin_problems():
    p = make("sum", "347+85+1206=?", "1638")
    for good in ("1638", " 1638 ", "+01,638.0", 1638):
        assert score_problem(p, good).correct, good
    for bad in ("1637", "", None, "16 38", "1638 or 1639", float("nan"), ["1638"]):
        verdict = score_problem(p, bad)
        assert not verdict.correct, bad
    assert get_task("product").check(make("product", "12*3=?", "36"), "36").correct
    assert not get_task("product").check(make("product", "12*3=?", "36"), "63").correct


def test_a_raising_scorer_is_a_wrong_answer(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("scorer exploded")

    p = make("sum", "1+2=?", "3")
    # reasoning-gym's scorer raising: the integer check takes over, nothing raises
    monkeypatch.setattr(arithmetic, "_gym_dataset", boom)
    assert score_problem(p, "3").correct and not score_problem(p, "4").correct
    # every scorer raising: a wrong answer with the reason
    monkeypatch.setattr(SumTask, "check", boom)
    tasks._DEFAULT_TASKS.clear()
    verdict = score_problem(p, "3")
    assert not verdict.correct and "scorer exploded" in verdict.reason
    tasks._DEFAULT_TASKS.clear()


def test_user_problems_use_math_or_integer_checks(monkeypatch):
    from varreason.eval import verify

    p = make("user", "q", "42")
    monkeypatch.delattr(verify, "check_math", raising=False)
    assert score_problem(p, "42").correct and not score_problem(p, "41").correct
    calls = []
    monkeypatch.setattr(verify, "check_math", lambda g, pr: calls.append((g, pr)) or verify.Verdict(True, "correct"),
                        raising=False)
    assert score_problem(p, "anything").correct and calls == [("42", "anything")]
    p.meta["answer_kind"] = "integer"
    assert not score_problem(p, "anything").correct
    monkeypatch.setattr(verify, "check_math", lambda g, pr: 1 / 0, raising=False)
    p.meta.clear()
    assert not score_problem(p, "42").correct  # a raising check_math is a wrong answer


def test_reasoning_gym_adapter():
    train, test = build_splits(["gym:chain_sum"], 6, 2, seed=0, difficulties=[1])
    assert len(train) == 6 and len(test) == 2
    assert not {p.question for p in train} & {p.question for p in test}
    p = train[0]
    assert p.task == "gym:chain_sum" and p.trace == "" and p.style == "none"
    assert score_problem(p, p.answer).correct and not score_problem(p, p.answer + "1").correct
    row = p.to_row()  # as read back from Parquet: meta values are strings
    again = Problem(**{**row, "meta": {k: str(v) for k, v in row["meta"].items()}})
    assert score_problem(again, p.answer).correct
    with pytest.raises(InputError):
        get_task("gym:no_such_dataset")


# --- user data ---------------------------------------------------------------------------------------------------

ROWS = [
    {"q": "2+2?", "why": "2+2=4", "ans": "4", "level": 1},
    {"q": "What is 3*5?", "why": "3*5=15", "ans": 15, "level": 2},
    {"q": "x^2=9, x>0?", "why": "x=3", "ans": "3", "level": None},
]
COLUMNS = {"question_column": "q", "trace_column": "why", "answer_column": "ans", "difficulty_column": "level"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_user_jsonl_and_parquet_round_trip(tmp_path):
    from_jsonl = load_user_problems(write_jsonl(tmp_path / "d.jsonl", ROWS), **COLUMNS)
    rows = [{**r, "ans": str(r["ans"])} for r in ROWS]  # Parquet columns have one type
    from_parquet = load_user_problems(write_parquet(tmp_path / "d.parquet", rows), **COLUMNS)
    for problems in (from_jsonl, from_parquet):
        assert [(p.question, p.trace, p.answer, p.difficulty) for p in problems] == [
            ("2+2?", "2+2=4", "4", 1), ("What is 3*5?", "3*5=15", "15", 2), ("x^2=9, x>0?", "x=3", "3", 0)]
        assert {p.task for p in problems} == {"user"} and {p.style for p in problems} == {"given"}
        assert len({p.id for p in problems}) == 3
    # problems written by the tool read back with the default column names
    built, _ = build_splits(["product"], 5, 0, seed=0, difficulties=[2])
    back = load_user_problems(write_parquet(tmp_path / "b.parquet", [p.to_row() for p in built]),
                              difficulty_column="difficulty")
    assert [(p.id, p.question, p.trace, p.answer, p.difficulty) for p in back] == [
        (p.id, p.question, p.trace, p.answer, p.difficulty) for p in built]
    plain = load_user_problems(write_jsonl(tmp_path / "plain.jsonl", [{"question": "a", "trace": "b", "answer": "c"}]))
    assert plain[0].difficulty == 0


def test_user_missing_column_names_file_row_and_field(tmp_path):
    rows = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "why"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(InputError) as err:
        load_user_problems(path, **COLUMNS)
    assert (err.value.file, err.value.row, err.value.field) == (path, 1, "why")
    line = err.value.line()
    assert path in line and "line 2" in line and "'why'" in line  # 1-based, as an editor counts
    with pytest.raises(InputError) as err:
        load_user_problems(path, **{**COLUMNS, "answer_column": "solution"})
    assert [(e.row, e.field) for e in err.value.errors] == [(0, "solution"), (1, "solution")]  # every bad row


@pytest.mark.parametrize("bad, field", [
    ({"why": ""}, "why"), ({"why": "   \n"}, "why"), ({"q": ""}, "q"), ({"ans": ""}, "ans"),
    ({"why": None}, "why"), ({"q": 12}, "q"), ({"ans": ["4"]}, "ans"), ({"ans": True}, "ans"),
    ({"level": "hard"}, "level"), ({"level": 1.5}, "level"),
])
def test_user_bad_values_are_errors(tmp_path, bad, field):
    rows = [dict(ROWS[0]), dict(ROWS[1]), {**ROWS[2], **bad}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(InputError) as err:
        load_user_problems(path, **COLUMNS)
    assert (err.value.file, err.value.row, err.value.field) == (path, 2, field)


def test_user_bad_sources_are_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        load_user_problems(str(tmp_path / "missing.jsonl"))
    assert "not found" in err.value.message
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "trace": "b", "answer": "c"}\n{not json\n')
    with pytest.raises(InputError) as err:
        load_user_problems(str(broken))
    assert err.value.row == 1 and err.value.line_no == 2 and "line 2: invalid JSON" in err.value.line()
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no rows"):
        load_user_problems(str(tmp_path / "empty.jsonl"))
    with pytest.raises(InputError) as err:
        load_user_problems("no-such-user/no-such-dataset-xyz")
    assert err.value.file == "no-such-user/no-such-dataset-xyz"
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "question": "q", "trace": "t", "answer": "1"}] * 2)
    with pytest.raises(InputError) as err:
        load_user_problems(dup)
    assert (err.value.row, err.value.field) == (1, "id")


def test_user_json_and_saved_dataset(tmp_path):
    records = [{"question": "q1", "trace": "t1", "answer": "1"}, {"question": "q2", "trace": "t2", "answer": "2"}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    assert [p.answer for p in load_user_problems(str(tmp_path / "d.json"))] == ["1", "2"]
    import datasets

    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    assert [p.question for p in load_user_problems(str(tmp_path / "saved"))] == ["q1", "q2"]


def test_reference_solutions_by_hand():
    """meta["solution"], the hint of posterior.hint: solution: running totals for sums; for products the shifted
    partial products and their sum, or the product at once when there is one non-zero partial product."""
    sums, products = arithmetic.SumTask(), arithmetic.ProductTask()
    assert sums.solution((347, 85, 1206)) == "347+85=432\n432+1206=1638"
    assert sums.solution((7, 2)) == "7+2=9"
    assert products.solution((347, 85)) == "347*5=1735\n347*80=27760\n1735+27760=29495"
    assert products.solution((347, 80)) == "347*80=27760"
    assert products.solution((41, 7)) == "41*7=287"
    for task in (sums, products):
        for p in fill_cells([task], 30, 0, seed=3, difficulties=list(task.levels))[0]:
            solution = p.meta["solution"]
            assert solution.endswith("=" + p.answer)
            assert solution != p.trace or p.style == "terse"  # a terse trace can be the solution itself


def test_user_solution_column_is_read_and_checked(tmp_path):
    rows = [dict(r, sol=f"solution {i}") for i, r in enumerate(ROWS)]
    problems = load_user_problems(write_jsonl(tmp_path / "d.jsonl", rows), **COLUMNS, solution_column="sol")
    assert [p.meta["solution"] for p in problems] == ["solution 0", "solution 1", "solution 2"]
    rows[1]["sol"] = ""
    with pytest.raises(InputError) as err:
        load_user_problems(write_jsonl(tmp_path / "e.jsonl", rows), **COLUMNS, solution_column="sol")
    assert "line 2" in str(err.value) and "sol" in str(err.value)
    del rows[1]["sol"]
    with pytest.raises(InputError, match="missing column"):
        load_user_problems(write_jsonl(tmp_path / "f.jsonl", rows), **COLUMNS, solution_column="sol")
