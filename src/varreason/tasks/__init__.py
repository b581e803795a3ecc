"""Problem sources: the built-in arithmetic and countdown families, reasoning-gym datasets, and users' own files.

    get_task("sum")                      a task by name (`TASKS`); "gym:<dataset>" wraps a reasoning-gym dataset
    build_splits(["sum", "product"], n_train, n_test, seed, difficulties, style_mix)
                                         balanced train / test problems, disjoint by construction
    fill_cells([task, ...], n_train, n_test, seed, difficulties)
                                         the same from any `Task` (base.py: what a task provides)
    score_problem(problem, answer)       a Verdict; never raises
    load_user_problems(path_or_name, question_column=..., ...)
"""

from __future__ import annotations

import random

from varreason.errors import InputError
from varreason.eval.verify import Verdict, check_integer
from varreason.tasks.arithmetic import ProductTask, SumTask, unit_hash
from varreason.tasks.base import Problem, Task
from varreason.tasks.countdown import CountdownTask
from varreason.tasks.stratos import NO_VERIFIER
from varreason.tasks.user import load_user_problems

TASKS: dict[str, type] = {"sum": SumTask, "product": ProductTask, "countdown": CountdownTask}

__all__ = [
    "TASKS",
    "Problem",
    "Task",
    "build_splits",
    "fill_cells",
    "get_task",
    "load_user_problems",
    "score_problem",
]


def get_task(name: str, **params) -> Task:
    """A task instance by name: "sum", "product", "countdown", or "gym:<reasoning-gym dataset>" (params go to its class)."""
    if isinstance(name, str) and name.startswith("gym:"):
        from varreason.tasks.gym import GymTask

        return GymTask(name[len("gym:"):], **params)
    if name not in TASKS:
        raise InputError(f"unknown task '{name}' (known: {', '.join(TASKS)}, gym:<dataset>)", field="task")
    return TASKS[name](**params)


def _spread(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def fill_cells(tasks: list[Task], n_train: int, n_test: int, seed: int, difficulties: list[int],
               ) -> tuple[list[Problem], list[Problem]]:
    """Balanced over (task, difficulty) cells; each canonical question goes to test when a seeded hash of it falls
    below n_test / (n_train + n_test), else to train, so no question is in both; repeats are dropped."""
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InputError(f"must be an integer >= 0, got {n!r}", field=name)
    if not tasks or not difficulties:
        raise InputError("need at least one task and one difficulty", field="difficulties" if tasks else "task")
    cells = [(task, d) for task in tasks for d in difficulties]
    for task, d in cells:
        task.check_difficulty(d)
    p_test = n_test / (n_train + n_test) if n_train + n_test else 0.0
    seen: set[str] = set()  # canonical keys already placed (a key can be drawn at two levels of one task)
    train: list[Problem] = []
    test: list[Problem] = []
    for (task, d), want_train, want_test in zip(cells, _spread(n_train, len(cells)), _spread(n_test, len(cells))):
        got = {"train": 0, "test": 0}
        limit = 50 * (want_train + want_test) + 2000
        for draws, (key, payload) in enumerate(task.candidates(seed, d)):
            if got["train"] >= want_train and got["test"] >= want_test:
                break
            if draws >= limit:
                raise InputError(
                    f"task '{task.name}' difficulty {d}: found only {got['train']} train / {got['test']} test "
                    f"distinct questions of {want_train} / {want_test} wanted; lower n_train / n_test or widen "
                    f"the difficulty table", field="n_train")
            if key in seen:
                continue
            split = "test" if unit_hash(seed, "split", key) < p_test else "train"
            if got[split] >= (want_test if split == "test" else want_train):
                continue
            seen.add(key)
            (test if split == "test" else train).append(task.build(payload, d, seed))
            got[split] += 1
    rng = random.Random(f"{seed}:shuffle")
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def build_splits(task_names: list[str], n_train: int, n_test: int, seed: int, difficulties: list[int],
                 style_mix: dict[str, float] | None = None) -> tuple[list[Problem], list[Problem]]:
    """Train and test problems of the built-in tasks, balanced over tasks x difficulties, deterministic in `seed`.

    Disjoint by construction: a question's split is a seeded hash of its canonical form (operands sorted), so the
    same question (or a reordering of its terms) can never be in both. Both splits carry teacher traces.
    """
    if isinstance(task_names, str):
        task_names = [task_names]
    tasks = []
    for name in task_names:
        params = {} if isinstance(name, str) and name.startswith("gym:") else {"style_mix": style_mix}
        tasks.append(get_task(name, **params))
    return fill_cells(tasks, n_train, n_test, seed, list(difficulties))


_DEFAULT_TASKS: dict[str, Task] = {}


def score_problem(problem: Problem, predicted_answer: object) -> Verdict:
    """Check a predicted answer against the problem's reference; never raises (an error is a wrong answer).

    Built-in and reasoning-gym problems use their task's verifier. Other problems (users' data) use
    `verify.check_math`, or `check_integer` when `problem.meta["answer_kind"] == "integer"` or `check_math` is absent;
    `answer_kind` "none" (a Bespoke-Stratos row whose reference solution has no final answer, e.g. code) is never
    correct: "unparseable_gold".
    """
    try:
        name = problem.task
        if name in TASKS or (isinstance(name, str) and name.startswith("gym:")):
            if name not in _DEFAULT_TASKS:
                _DEFAULT_TASKS[name] = get_task(name)
            return _DEFAULT_TASKS[name].check(problem, predicted_answer)
        from varreason.eval import verify

        kind = (problem.meta or {}).get("answer_kind")
        if kind == NO_VERIFIER:  # a reference with no final answer to check (code rows of Bespoke-Stratos)
            return Verdict(False, "unparseable_gold")
        check_math = getattr(verify, "check_math", None)
        if kind == "integer" or check_math is None:
            return check_integer(problem.answer, predicted_answer)
        return check_math(problem.answer, predicted_answer)
    except Exception as exc:  # noqa: BLE001 - a verifier never raises
        return Verdict(False, f"error: {type(exc).__name__}: {exc}")
