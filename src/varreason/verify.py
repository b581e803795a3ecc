"""Answer checking. Nothing here raises: every failure is a wrong answer with a reason.

(Skeleton: the full module with `check_math` comes next; `Verdict`, `check_integer` and `guarded` are the
stable interface the task families use.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # "correct" | "wrong" | "unparseable_gold" | "unparseable_prediction" | "timeout" | "error: ..."

    def __bool__(self) -> bool:
        return self.correct


_INT = re.compile(r"[-+]?\d[\d,]*")


def parse_integer(text: object) -> int | None:
    """The last integer in `text` (thousands separators allowed), or None."""
    if not isinstance(text, (str, int)) or isinstance(text, bool):
        return None
    found = _INT.findall(str(text))
    if not found:
        return None
    try:
        return int(found[-1].replace(",", ""))
    except ValueError:
        return None


def check_integer(gold: object, prediction: object) -> Verdict:
    """Exact integer match; the verifier of the built-in arithmetic families."""
    try:
        g = parse_integer(gold)
        if g is None:
            return Verdict(False, "unparseable_gold")
        p = parse_integer(prediction)
        if p is None:
            return Verdict(False, "unparseable_prediction")
        return Verdict(g == p, "correct" if g == p else "wrong")
    except Exception as exc:  # noqa: BLE001 - a verifier never raises
        return Verdict(False, f"error: {type(exc).__name__}: {exc}")


def guarded(scorer: Callable[..., object]) -> Callable[..., Verdict]:
    """Wrap a third-party scorer (e.g. reasoning-gym's `score_answer`) so an exception is a wrong answer."""

    def wrapped(*args, **kwargs) -> Verdict:
        try:
            value = scorer(*args, **kwargs)
            score = float(value)
        except Exception as exc:  # noqa: BLE001
            return Verdict(False, f"error: {type(exc).__name__}: {exc}")
        if score != score:  # NaN
            return Verdict(False, "error: scorer returned NaN")
        return Verdict(score >= 1.0, "correct" if score >= 1.0 else "wrong")

    return wrapped
