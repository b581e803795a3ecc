"""Built-in procedural arithmetic: multi-term sums and multi-digit products, with a teacher that writes traces.

Each family has a difficulty table (`SUM_LEVELS`, `PRODUCT_LEVELS`: module-level so it can be tuned), a short
question ("347+85+1206=?", "347*85=?"), the integer answer, a verifier, and a **teacher** whose traces are correct
but not the best ones for a small student (the paper's premise in miniature). Each trace has one of three styles:

- `careful`: every step is a small operation a tiny model can do "in its head". Sums are added column by column
  from the units, carry first; each line is `addends=column_sum running_result`; once no carry is left and one
  term alone has digits left, a last line brings them down (the full result). 347+85+1206=? and 347*85=?:

      7+5+6=18 8          347*5             347*8             1735+27760
      1+4+8+0=13 38       7*5=35 5          7*8=56 6          5+0=5 5
      1+3+2=6 638         4*5+3=23 35       4*8+5=37 76       3+6=9 95
      1638                3*5+2=17 1735     3*8+3=27 2776     7+7=14 495
                                                              1+1+7=9 9495
                                                              29495

  (the product trace is the three columns one after the other). The running result (the digits written so far)
  makes the final answer a copy, not a reversal. Products multiply the first factor by each digit of the second,
  units first, digit by digit with carries (`4*8+5=37`), after a header line naming the partial product (`347*8`),
  then add the shifted partial products with the same column addition after a header line (`1735+27760`).
  Multiplier digit 1 takes one line (`347*1=347`), digit 0 one line (`347*0=0`) and its zero partial product is
  left out of the sum (a single non-zero partial product is just written shifted).
- `terse`: what a strong model writes when it skips steps a small model cannot do in its head. Sums: running
  totals, one to three terms at a time (`347+85=432` / `432+1206=1638`). Products: either the partial products
  directly (`347*5=1735` / `347*80=27760` / `1735+27760=29495`) or just the product (`347*85=29495`).
- `corrected`: a careful trace with one visible slip (one step line off by a little, its running result
  consistent with the slip), followed at once by a line `wait <the same step done right>`; then it goes on
  correctly. `CORRECTION_MARKER` is the word.

Every trace of every style ends with the correct integer and its arithmetic is right (except the one slip line
of a corrected trace). The style is drawn from `style_mix` (default careful 0.5, terse 0.35, corrected 0.15),
**independently of difficulty**: a teacher that skipped more on hard problems would confound "hard" with
"terse", and the reports split accuracy by difficulty. The style and the slip are drawn from an RNG seeded by
(seed, the question), so a question's trace does not depend on which other questions were drawn, and changing
`style_mix` leaves the questions unchanged.

Each problem also carries a reference solution in `meta["solution"]` (the paper's hint y' is the whole solution section,
App. G; `posterior.hint: solution`): the key intermediate results, one per line, ending with the answer. Sums: running
totals one term at a time (`347+85=432` / `432+1206=1638`); products: the shifted partial products and their sum
(`347*5=1735` / `347*80=27760` / `1735+27760=29495`). It is the same for every trace style.

Why not reasoning-gym for the questions: its `chain_sum` always mixes `+` and `-` (no option for sums only) and
its `products` draws every factor with the same number of digits (2x2, 3x3, ...), too coarse a difficulty knob
(3x1, 2x2, 3x2 are the useful steps for a tiny model); both also add a long preamble to each question. So the
operands are drawn here, and reasoning-gym provides the scorer: its `score_answer` for `chain_sum` / `products`
(a tolerant decimal comparison: "+01,638.0" == "1638"), wrapped by `verify.guarded` so an exception is a wrong
answer, with `verify.check_integer` as the backup when that scorer fails.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterator
from typing import ClassVar

from varreason.errors import InputError
from varreason.eval.verify import Verdict, check_integer, guarded
from varreason.tasks.base import Problem, ProceduralTask

# difficulty -> generator parameters. Sums: number of terms, and each term's digit count drawn from (lo, hi).
SUM_LEVELS: dict[int, dict] = {
    1: {"terms": 2, "digits": (1, 2)},
    2: {"terms": 2, "digits": (2, 3)},
    3: {"terms": 3, "digits": (2, 2)},
    4: {"terms": 3, "digits": (2, 3)},
    5: {"terms": 4, "digits": (2, 3)},
}
# Products: digits of (first factor, second factor); the second is the multiplier (one partial product per digit).
# A one-digit multiplier is drawn from 2..9 (x0 and x1 are trivial).
PRODUCT_LEVELS: dict[int, dict] = {
    1: {"digits": (2, 1)},
    2: {"digits": (3, 1)},
    3: {"digits": (2, 2)},
    4: {"digits": (3, 2)},
    5: {"digits": (4, 2)},  # careful traces ~155 chars (3x3 would be ~180, 4x3 ~240)
}
STYLES = ("careful", "terse", "corrected")
DEFAULT_STYLE_MIX: dict[str, float] = {"careful": 0.5, "terse": 0.35, "corrected": 0.15}
CORRECTION_MARKER = "wait"


def normalize_style_mix(style_mix: dict[str, float] | None) -> dict[str, float]:
    """Validate a style mix and scale it to sum to 1. Unknown styles or negative weights are an InputError."""
    mix = dict(DEFAULT_STYLE_MIX if style_mix is None else style_mix)
    for style, weight in mix.items():
        if style not in STYLES:
            raise InputError(f"unknown trace style '{style}' (known: {', '.join(STYLES)})", field="style_mix")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0:
            raise InputError(f"weight of style '{style}' must be a number >= 0, got {weight!r}", field="style_mix")
    total = float(sum(mix.values()))
    if total <= 0:
        raise InputError("style weights sum to 0", field="style_mix")
    return {style: mix.get(style, 0.0) / total for style in STYLES}


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) from a stable hash of `parts` (the same in every process, unlike `hash`)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --- the teacher's building blocks -------------------------------------------------------------------------------
# A "step" is (expression, value, is_last_column); its line is `expression=value running_result`. A step with value
# None brings digits down: its line is the running result with `expression` (those digits) in front.


def column_steps(terms: list[int]) -> list[tuple[str, int | None, bool]]:
    """Column addition of `terms` from the units: addends are the carry (when not 0) then each term's digit.

    When no carry is left and only one term has digits left, the last step brings those digits down at once: the
    step ("3", None, True) means "prepend 3 to the running result" and its line is the full result.
    """
    digits = [str(t)[::-1] for t in terms]
    width = max(len(d) for d in digits)
    steps, carry = [], 0
    for col in range(width):
        left = [d for d in digits if col < len(d)]
        if col > 0 and carry == 0 and len(left) == 1:
            steps.append((left[0][col:][::-1], None, True))
            break
        addends = ([carry] if carry else []) + [int(d[col]) for d in digits if col < len(d)]
        total = sum(addends)
        steps.append(("+".join(map(str, addends)), total, col == width - 1))
        carry = total // 10
    return steps


def digit_product_steps(a: int, d: int) -> list[tuple[str, int, bool]]:
    """a times one digit d, digit by digit from the units: `4*8+5` is digit 4 times 8 plus the carry 5."""
    digits = str(a)[::-1]
    steps, carry = [], 0
    for i, ch in enumerate(digits):
        value = int(ch) * d + carry
        steps.append((f"{ch}*{d}" + (f"+{carry}" if carry else ""), value, i == len(digits) - 1))
        carry = value // 10
    return steps


def step_lines(steps: list[tuple[str, int, bool]], slip: int | None = None, rng: random.Random | None = None,
               ) -> list[str]:
    """Lines `expr=value running` for a block of steps; with `slip`, that step is first written wrong, then redone
    after `wait`."""
    lines, running = [], ""
    for i, (expr, value, last) in enumerate(steps):
        if value is None:  # bring the remaining digits down
            running = expr + running
            lines.append(running)
            continue
        if i == slip:
            wrong = slipped_value(value, rng or random.Random(0))
            lines.append(f"{expr}={wrong} {(str(wrong) if last else str(wrong % 10)) + running}")
            prefix = f"{CORRECTION_MARKER} "
        else:
            prefix = ""
        running = (str(value) if last else str(value % 10)) + running
        lines.append(f"{prefix}{expr}={value} {running}")
    return lines


def slipped_value(value: int, rng: random.Random) -> int:
    """A plausible slip: off by 1, 2 or 10 (never negative, never the right value)."""
    options = [value + delta for delta in (1, -1, 2, 10, -10) if value + delta >= 0]
    return rng.choice(options)


# --- the two families --------------------------------------------------------------------------------------------


@functools.cache
def _gym_dataset(name: str):
    import reasoning_gym  # slow to import (~3 s): only when something is scored

    return reasoning_gym.create_dataset(name, seed=0, size=1)


class ArithmeticTask(ProceduralTask):
    """Common parts of `sum` and `product`: operands -> question, answer, teacher trace; integer scoring."""

    gym_scorer = ""  # the reasoning-gym dataset whose `score_answer` fits this family
    default_levels: ClassVar[dict[int, dict]] = {}

    def __init__(self, style_mix: dict[str, float] | None = None, levels: dict[int, dict] | None = None):
        self.style_mix = normalize_style_mix(style_mix)
        try:
            self.levels = {int(k): dict(v) for k, v in (levels or self.default_levels).items()}
            for level in self.levels.values():
                self.validate_level(level)
        except (TypeError, ValueError, KeyError) as exc:
            raise InputError(f"bad difficulty table for '{self.name}': {levels!r} ({type(exc).__name__}: {exc})",
                             field="levels") from None

    def validate_level(self, level: dict) -> None:
        raise NotImplementedError

    # operands
    def draw(self, rng: random.Random, difficulty: int) -> tuple[int, ...]:
        raise NotImplementedError

    def question(self, operands: tuple[int, ...]) -> str:
        raise NotImplementedError

    def value(self, operands: tuple[int, ...]) -> int:
        raise NotImplementedError

    # traces
    def careful(self, operands: tuple[int, ...], slip: int | None = None, rng: random.Random | None = None,
                ) -> list[str]:
        raise NotImplementedError

    def terse(self, operands: tuple[int, ...], rng: random.Random) -> tuple[list[str], str]:
        raise NotImplementedError

    def n_slippable(self, operands: tuple[int, ...]) -> int:
        raise NotImplementedError

    def solution(self, operands: tuple[int, ...]) -> str:
        """The reference solution (the hint `posterior.hint: solution`, the paper's App. G y'): the key intermediate
        results in a few lines, ending with the answer; not the teacher's step-by-step trace."""
        raise NotImplementedError

    def candidates(self, seed: int, difficulty: int) -> Iterator[tuple[str, tuple[int, ...]]]:
        self.check_difficulty(difficulty)
        rng = random.Random(f"{seed}:{self.name}:{difficulty}")
        while True:
            operands = self.draw(rng, difficulty)
            yield f"{self.name}:{'+'.join(map(str, sorted(operands)))}", operands

    def build(self, operands: tuple[int, ...], difficulty: int, seed: int) -> Problem:
        key = f"{self.name}:{'+'.join(map(str, sorted(operands)))}"
        rng = random.Random(f"{seed}:{key}:trace")
        u, style, variant, slip = rng.random(), STYLES[-1], "", None
        for name in STYLES:
            if u < self.style_mix[name]:
                style = name
                break
            u -= self.style_mix[name]
        if style == "corrected" and self.n_slippable(operands) == 0:
            style = "careful"  # nothing to slip on (e.g. 43*10: one-line steps only)
        if style == "careful":
            lines = self.careful(operands)
        elif style == "terse":
            lines, variant = self.terse(operands, rng)
        else:
            slip = rng.randrange(self.n_slippable(operands))
            lines = self.careful(operands, slip=slip, rng=rng)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return Problem(
            id=f"{self.name}-{difficulty}-{digest}", question=self.question(operands),
            answer=str(self.value(operands)), trace="\n".join(lines), task=self.name, difficulty=difficulty,
            style=style,
            meta={"operands": ",".join(map(str, operands)), "variant": variant, "slip": "" if slip is None else slip,
                  "solution": self.solution(operands)},
        )

    def check(self, problem: Problem, predicted_answer: object) -> Verdict:
        """reasoning-gym's scorer for this family (guarded); `check_integer` when that scorer fails or the
        prediction is not text (its scorer would take ["1638"] for "1638")."""
        if not isinstance(predicted_answer, str):
            return check_integer(problem.answer, predicted_answer)
        score = guarded(lambda pred, gold: _gym_dataset(self.gym_scorer).score_answer(pred, {"answer": gold}))
        verdict = score(predicted_answer, str(problem.answer))
        if verdict.reason.startswith("error"):
            return check_integer(problem.answer, predicted_answer)
        return verdict


def _digits_value(rng: random.Random, digits: int, low_one_digit: int = 1) -> int:
    if digits == 1:
        return rng.randint(low_one_digit, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


class SumTask(ArithmeticTask):
    """Multi-term sums of positive integers; difficulty = number of terms and digits per term."""

    name = "sum"
    gym_scorer = "chain_sum"
    default_levels = SUM_LEVELS

    def validate_level(self, level):
        lo, hi = level["digits"]
        if not (isinstance(level["terms"], int) and level["terms"] >= 2 and isinstance(lo, int) and 1 <= lo <= hi):
            raise ValueError("need terms >= 2 and digits (lo, hi) with 1 <= lo <= hi")

    def draw(self, rng, difficulty):
        level = self.levels[difficulty]
        lo, hi = level["digits"]
        return tuple(_digits_value(rng, rng.randint(lo, hi)) for _ in range(level["terms"]))

    def question(self, operands):
        return "+".join(map(str, operands)) + "=?"

    def value(self, operands):
        return sum(operands)

    def careful(self, operands, slip=None, rng=None):
        return step_lines(column_steps(list(operands)), slip, rng)

    def n_slippable(self, operands):
        return sum(value is not None for _, value, _ in column_steps(list(operands)))

    def terse(self, operands, rng):
        """Running totals, adding one to three terms per line."""
        lines, total, i = [], operands[0], 1
        while i < len(operands):
            chunk = operands[i: i + rng.randint(1, 3)]
            lines.append(f"{'+'.join(map(str, (total, *chunk)))}={total + sum(chunk)}")
            total, i = total + sum(chunk), i + len(chunk)
        return lines, "running"

    def solution(self, operands):
        """Running totals, one term per line: 347+85=432 / 432+1206=1638."""
        lines, total = [], operands[0]
        for term in operands[1:]:
            lines.append(f"{total}+{term}={total + term}")
            total += term
        return "\n".join(lines)


class ProductTask(ArithmeticTask):
    """Products of two integers; difficulty = digits of each factor. The second factor is the multiplier."""

    name = "product"
    gym_scorer = "products"
    default_levels = PRODUCT_LEVELS

    def validate_level(self, level):
        da, db = level["digits"]
        if not (isinstance(da, int) and isinstance(db, int) and da >= 1 and db >= 1):
            raise ValueError("need digits (a, b) with a, b >= 1")

    def draw(self, rng, difficulty):
        da, db = self.levels[difficulty]["digits"]
        return _digits_value(rng, da, low_one_digit=2), _digits_value(rng, db, low_one_digit=2)

    def question(self, operands):
        return f"{operands[0]}*{operands[1]}=?"

    def value(self, operands):
        return operands[0] * operands[1]

    def _blocks(self, operands):
        """One block per multiplier digit (units first): (header, steps); digits 0 and 1 are a single line."""
        a, b = operands
        blocks = []
        for ch in str(b)[::-1]:
            d = int(ch)
            blocks.append((f"{a}*{d}={a * d}", []) if d <= 1 else (f"{a}*{d}", digit_product_steps(a, d)))
        partials = [a * int(ch) * 10**j for j, ch in enumerate(str(b)[::-1]) if ch != "0"]
        if len(str(b)) > 1:  # add the shifted non-zero partial products (just shift when there is one)
            blocks.append(("+".join(map(str, partials)), column_steps(partials) if len(partials) > 1 else []))
        return blocks

    def careful(self, operands, slip=None, rng=None):
        lines, offset = [], 0
        for header, steps in self._blocks(operands):
            real = sum(value is not None for _, value, _ in steps)  # a bring-down step is always last
            local = None if slip is None or not offset <= slip < offset + real else slip - offset
            lines.append(header)
            lines += step_lines(steps, local, rng)
            offset += real
        return lines

    def n_slippable(self, operands):
        return sum(value is not None for _, steps in self._blocks(operands) for _, value, _ in steps)

    def terse(self, operands, rng):
        """Either the shifted partial products and their sum, or the product at once."""
        a, b = operands
        if len(str(b)) == 1 or rng.random() < 0.5:
            return [f"{a}*{b}={a * b}"], "direct"
        lines, partials = [], []
        for j, ch in enumerate(str(b)[::-1]):
            if ch != "0":
                partials.append(a * int(ch) * 10**j)
                lines.append(f"{a}*{int(ch) * 10**j}={partials[-1]}")
        if len(partials) > 1:
            lines.append(f"{'+'.join(map(str, partials))}={a * b}")
        return lines, "partials"

    def solution(self, operands):
        """The shifted partial products and their sum (347*5=1735 / 347*80=27760 / 1735+27760=29495); a one-digit
        multiplier or a single non-zero partial product is the product at once."""
        a, b = operands
        partials = [(int(ch) * 10**j, a * int(ch) * 10**j) for j, ch in enumerate(str(b)[::-1]) if ch != "0"]
        if len(partials) < 2:
            return f"{a}*{b}={a * b}"
        lines = [f"{a}*{m}={value}" for m, value in partials]
        return "\n".join(lines + [f"{'+'.join(str(v) for _, v in partials)}={a * b}"])
