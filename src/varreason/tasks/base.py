"""The problem record every task produces, and the task interface.

A problem is one question with its reference answer and a teacher's worked trace. Columns follow the run
directory's `data/` artifact: question, answer, trace, task, difficulty (1 = easiest), plus an id and the
teacher's trace style so reports can split results by it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol


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
    """A problem source. `generate` is deterministic in its seed; `score` never raises (1.0 = correct)."""

    name: str

    def generate(self, n: int, seed: int, difficulties: list[int]) -> list[Problem]: ...

    def score(self, problem: Problem, predicted_answer: str) -> float: ...
