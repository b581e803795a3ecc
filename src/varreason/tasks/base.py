"""The problem record every task produces, and what a task provides.

A problem is one question with its reference answer and a teacher's worked trace. Columns follow the run
directory's `data/` artifact: question, answer, trace, task, difficulty (1 = easiest), plus an id and the
teacher's trace style so reports can split results by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol

from varreason.errors import InputError
from varreason.eval.verify import Verdict


@dataclass
class Problem:
    id: str
    question: str
    answer: str
    trace: str
    task: str
    difficulty: int
    style: str = "given"  # teacher trace style: careful | terse | corrected | given (user data)
    meta: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        row = asdict(self)
        row["meta"] = {k: str(v) for k, v in self.meta.items()}
        return row


class Task(Protocol):
    """A generated problem source, as `tasks.fill_cells` draws train / test problems from it and `tasks.score_problem`
    checks answers with it (the built-in families in arithmetic.py, reasoning-gym datasets in gym.py).

    `candidates` is an endless stream of (canonical key, payload), deterministic in `seed`: the key is what "the same
    question" means (sums are commutative: operands sorted), so no question is in both splits. `build` makes the
    Problem of a payload, with its teacher trace. `check` never raises: a verifier's error is a wrong answer.
    `levels` maps each difficulty to the generator's parameters; `check_difficulty` refuses one it lacks.
    """

    name: str
    levels: dict[int, dict]

    def candidates(self, seed: int, difficulty: int) -> Iterator[tuple[str, object]]: ...

    def build(self, payload: object, difficulty: int, seed: int) -> Problem: ...

    def check(self, problem: Problem, predicted_answer: object) -> Verdict: ...

    def check_difficulty(self, difficulty: int) -> None: ...


class ProceduralTask:
    """What every generated task shares: a difficulty must be one of its `levels`. Subclasses provide the rest of
    `Task` (`candidates`, `build`, `check`)."""

    name = "procedural"
    levels: dict[int, dict]

    def check_difficulty(self, difficulty: int) -> None:
        if difficulty not in self.levels:
            raise InputError(f"task '{self.name}' has no difficulty {difficulty!r} (levels: "
                             f"{', '.join(map(str, sorted(self.levels)))})", field="difficulties")
