"""Answer extraction for evaluation, per answer type. Nothing here raises: no answer is `None`.

Math (`extract_math_answer`, `check_math_text`)
    Where the answer is taken from, in order (the first that gives a non-empty answer wins):
      1. the answer section, when the caller gives one (our format's `<answer>...</answer>` content, as cut by
         `templates.Templates.cut`): inside it, the last `\\boxed{...}`, else the last "final answer" phrase,
         else the whole section. Source "section".
      2. the whole text: the last `\\boxed{...}` anywhere (SkyThought's rule). Source "boxed".
      3. the whole text: the last "final answer" phrase: "The final answer is X", "Final Answer: X", "#### X",
         "answer is X", "Answer: X". Source "final_line".
      4. nothing: `None` (a check then says "no answer").
    So when the answer section exists and holds something, it wins over a `\\boxed{}` elsewhere in the text (the
    section is the model's declared answer; a box inside the trace is a step of the reasoning). SkyThought has
    no section and takes the last box anywhere, which is what we fall back to when the section is missing or
    empty. `extract_math_answer_with_source` says which rule gave the answer.
    After a "final answer" phrase the answer is a leading `$...$` / `\\(...\\)` / `\\[...\\]` span if there is
    one, else the rest of the line up to the first sentence end (". ").

    The answer is then normalised (`normalize_math_answer`): surrounding `$`, `$$`, `\\(\\)`, `\\[\\]`,
    `\\boxed{}` and a `\\text{}` (`\\textbf`, `\\mathrm`, `\\mbox`, `\\textrm`) that wraps the WHOLE answer are
    removed (a unit like `5\\text{ cm}` is left to math-verify, which drops it); `\\dfrac`/`\\tfrac` become
    `\\frac`; `\\displaystyle` goes; trailing periods, `\\,`, `\\;`, `\\quad` and markdown bold go; a bare `%`
    becomes `\\%`; thousands separators (`,`, `{,}`, `\\,`) are removed only when the whole answer is one number
    grouped in threes (`1,234` and `-1,234,567.5` are numbers; `1,23` and `(1,234)` are left alone, so math-verify
    reads them as lists / tuples).

    Percentages keep their percent sign, so the percent meaning survives extraction. math-verify (0.9) reads
    `X\\%` as X/100 but compares integer percentages by their number: `50\\%` equals both `50` and `0.5`, while
    `12.5\\%` equals `0.125` and not `12.5`. `check_math_text` makes this consistent: when the first check fails
    and one side is a plain-number percentage, it checks again with the percent signs dropped, so `X\\%` is
    correct against both X/100 (its value) and X (the bare number, the common gold convention of MATH-style sets,
    which SkyThought also accepts by stripping `%` and comparing ref, ref/100 and ref*100).

    Before math-verify, the gold (its last `\\boxed{}` if it has one) and the prediction are normalised the same
    way and each wrapped in `\\boxed{}` (math-verify only reads LaTeX inside delimiters); identical non-empty
    normalised strings are correct without it (this is what makes text answers such as `\\text{north}`
    comparable).

Multiple choice (`extract_choice`, `check_choice`)
    Allowed letters: the first `n_choices` of A..Z (or `letters`); any other letter is ignored wherever it
    appears, as if it were not there. Three tiers; within a tier the LAST match in the text wins, and a lower
    tier is only looked at when the higher ones found no allowed letter:
      1. explicit answers: a `\\boxed{...}` whose content is a letter (`\\boxed{B}`, `\\boxed{\\text{(B)}}`,
         `\\boxed{B) 42}`), and answer phrases: "answer is B", "Answer: B", "answer would be (B)",
         "the correct option/choice/answer is (C)", "option C is correct"; the letter may be wrapped in (), [],
         `**`, `$`, `\\text{}`.
      2. formatted letters: `(B)`, `B)` (not after a word character, so `P(A)` and `f(B)` do not count),
         `**B**`, and a letter that ends the text ("... so B." / "B").
      3. fallback, as SkyThought (GPQA) and MMLU-Pro do: the last standalone capital letter (not the argument
         of a function such as `P(A)`).
    The article / pronoun trap: a bare capital "A" or "I" followed by a lowercase word or a number ("A train
    leaves ...", "A 5 kg block", "I think") is read as a word, not a letter, in tiers 1 and 3, unless that word
    cannot follow an article or pronoun ("A is correct", "A because ..."; see `_LETTER_VERBS`). Lowercase letters
    count only inside a box, or wrapped ("(b)", "**b**") after an answer phrase ("the answer is (b)"):
    SkyThought upper-cases the whole text first, which turns every article "a" into a candidate; we do not.
"""

from __future__ import annotations

import re
import string

from varreason.eval.verify import Verdict, as_text, check_math, extract_boxed

__all__ = [
    "check_choice",
    "check_math_text",
    "choice_letters",
    "extract_choice",
    "extract_math_answer",
    "extract_math_answer_with_source",
    "normalize_math_answer",
]

# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _closing_brace(s: str, open_idx: int) -> int:
    """Index of the `}` matching the `{` at `open_idx` (escaped braces skipped), or -1 if it never closes."""
    depth, i = 0, open_idx
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _iter_boxed(text: str):
    """(start, end, content) of every top-level `\\boxed{...}` in order; stops at an unclosed box."""
    pos = 0
    while True:
        m = _BOX.search(text, pos)
        if m is None:
            return
        close = _closing_brace(text, m.end() - 1)
        if close < 0:
            return
        yield m.start(), close + 1, text[m.end() : close]
        pos = close + 1


# ---------------------------------------------------------------------------------------------------------------
# Math: normalisation

_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|boxed|fbox)\s*\{")
_TRAILING_SPACES = ("\\qquad", "\\quad", "\\,", "\\;", "\\:", "\\!", "\\ ")
_THOUSANDS = re.compile(
    r"(?P<pre>\\\$\s*)?(?P<sign>[-+])?(?P<num>[0-9]{1,3}(?:(?:,|\{,\}|\\,)[0-9]{3})+(?:\.[0-9]+)?)"
    r"(?P<post>\s*(?:\\%|\\text\s*\{[^{}]*\})?)"
)


def _strip_once(s: str) -> str:
    s = s.strip()
    if s.startswith("**"):  # markdown bold, also half of it ("**Answer:** 42**" leaves "42**")
        s = s[2:].strip()
    if s.endswith("**"):
        s = s[:-2].strip()
    for left, right in _WRAPPERS:
        if len(s) >= len(left) + len(right) + 1 and s.startswith(left) and s.endswith(right):
            inner = s[len(left) : -len(right)]
            if left == "$" and "$" in inner:
                continue  # "$a$ and $b$" is not one wrapped span
            return inner.strip()
    m = _TEXT_CMD.match(s)
    if m and _closing_brace(s, m.end() - 1) == len(s) - 1:
        return s[m.end() : -1].strip()
    return _strip_trailing(s)


def _strip_trailing(s: str) -> str:
    """Drop trailing whitespace, periods and LaTeX spaces (`\\,`, `\\quad`, ...); linear, no regex backtracking."""
    while True:
        old = s
        s = s.rstrip(" \t\n\r\f\v.")
        for suffix in _TRAILING_SPACES:
            if s.endswith(suffix) and not s.endswith("\\" + suffix):
                s = s[: -len(suffix)]
                break
        if s == old:
            return s


def normalize_math_answer(answer: str | None) -> str | None:
    """A math answer cleaned for comparison (see the module docstring); None for nothing or non-text."""
    if not isinstance(answer, str):
        return None
    try:
        s = answer.strip()
        for _ in range(10):
            t = _strip_once(s)
            if t == s:
                break
            s = t
        s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
        s = re.sub(r"\\displaystyle(?![a-zA-Z])\s*", "", s)
        s = re.sub(r"(?<!\\)%", r"\\%", s)
        m = _THOUSANDS.fullmatch(s)
        if m:
            num = re.sub(r",|\{,\}|\\,", "", m.group("num"))
            s = f"{m.group('pre') or ''}{m.group('sign') or ''}{num}{m.group('post') or ''}"
        s = s.strip()
        return s or None
    except Exception:  # noqa: BLE001 - extraction never raises
        return None


# ---------------------------------------------------------------------------------------------------------------
# Math: extraction

# (No two adjacent quantifiers over the same characters: the patterns stay linear on long whitespace runs.)
_FINAL = re.compile(
    r"(?:\banswer\b[\s*]*(?:is\b|:|=)"  # "(final) answer is X", "Final Answer: X", "**Answer:** X"
    r"|\bfinal\s+answer\b[ \t]*\*\*"  # "**Final Answer** X"
    r"|\bfinal\s+answer[ \t]*(?=\n)"  # a "Final Answer" heading, the answer on a following line
    r"|####)"  # GSM8K
    r"[ \t:*]*",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_SPAN_OPEN = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}


def _after_cue(rest: str) -> str | None:
    """The answer written right after a final-answer phrase (first line, or a leading math span)."""
    rest = rest.lstrip()
    for left, right in _SPAN_OPEN.items():
        if rest.startswith(left):
            end = rest.find(right, len(left))
            if end > len(left):
                return rest[: end + len(right)]
            break
    line = rest.split("\n", 1)[0]
    m = _SENTENCE_END.search(line)
    if m:
        line = line[: m.start()]
    return line.strip() or None


def _final_line_answer(text: str) -> str | None:
    for m in reversed(list(_FINAL.finditer(text))):
        answer = normalize_math_answer(_after_cue(text[m.end() :]) or "")
        if answer:
            return answer
    return None


def _from_text(text: str) -> tuple[str | None, str | None]:
    boxed = extract_boxed(text)
    if boxed is not None:
        answer = normalize_math_answer(boxed)
        if answer:
            return answer, "boxed"
    answer = _final_line_answer(text)
    if answer:
        return answer, "final_line"
    return None, None


def extract_math_answer_with_source(
    text: str | None, answer_section: str | None = None
) -> tuple[str | None, str | None]:
    """(answer, source): source is "section", "boxed", "final_line", or None with a None answer."""
    try:
        if isinstance(answer_section, str) and answer_section.strip():
            answer, _ = _from_text(answer_section)
            if answer is None:
                answer = normalize_math_answer(answer_section)
            if answer:
                return answer, "section"
        if isinstance(text, str) and text:
            return _from_text(text)
        return None, None
    except Exception:  # noqa: BLE001 - extraction never raises
        return None, None


def extract_math_answer(text: str | None, answer_section: str | None = None) -> str | None:
    """The final math answer of a generation, normalised, or None (the rules: module docstring)."""
    return extract_math_answer_with_source(text, answer_section)[0]


_PLAIN_PERCENT = re.compile(r"\s*[-+]?[0-9]+(?:\.[0-9]+)?\s*\\%\s*")


def check_math_text(gold: object, text: str | None, answer_section: str | None = None,
                    timeout_s: float | None = None) -> Verdict:
    """Extract the answer from `text` (and `answer_section`) and check it against `gold` with math-verify.

    No answer gives Verdict(False, "no answer"); otherwise the reasons are those of `verify.check_math`.
    """
    try:
        pred = extract_math_answer(text, answer_section)
        if pred is None:
            return Verdict(False, "no answer")
        g = as_text(gold, "gold")
        if g is not None:
            boxed = extract_boxed(g)
            g = normalize_math_answer(boxed if boxed is not None else g)
        if not g:
            return Verdict(False, "unparseable_gold")
        if g == pred:
            return Verdict(True, "correct")
        kwargs = {} if timeout_s is None else {"timeout_s": timeout_s}
        verdict = check_math(f"\\boxed{{{g}}}", f"\\boxed{{{pred}}}", **kwargs)
        if not verdict.correct and (_PLAIN_PERCENT.fullmatch(g) or _PLAIN_PERCENT.fullmatch(pred)):
            g2, p2 = g.replace("\\%", "").strip(), pred.replace("\\%", "").strip()
            again = check_math(f"\\boxed{{{g2}}}", f"\\boxed{{{p2}}}", **kwargs)
            if again.correct:
                return again
        return verdict
    except Exception as exc:  # noqa: BLE001 - a checker never raises
        msg = str(exc)[:200]
        return Verdict(False, f"error: {type(exc).__name__}: {msg}")


# ---------------------------------------------------------------------------------------------------------------
# Multiple choice

# Words that cannot follow the article "A" (or the pronoun "I"), so "A is correct" still names option A.
_LETTER_VERBS = frozenset(
    [
        "is", "was", "would", "will", "should", "must", "seems", "seem", "appears", "matches", "fits", "satisfies",
        "gives", "and", "or", "but", "because", "since", "as", "then", "here", "there",
    ]
)
_I_VERBS = frozenset({"is", "was", "and", "or", "here", "there"})


def choice_letters(n_choices: int | None = 4, letters: str | None = None) -> str:
    """The allowed option letters: `letters` if given, else the first `n_choices` of A..Z (A..J when n < 1)."""
    if letters:
        return "".join(c.upper() for c in letters if c.isalpha())
    try:
        n = int(n_choices) if n_choices is not None else 0
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        n = 10  # unknown: A..J, MMLU-Pro's range
    return string.ascii_uppercase[: min(n, 26)]


def _is_word(text: str, end: int, letter: str) -> bool:
    """A bare "A"/"I" at text[end-1] used as an English word (followed by a lowercase word or a number)."""
    if letter not in "AI":
        return False
    m = re.match(r"[ \t]+([a-z][a-z'-]*|[0-9])", text[end:])
    if not m:
        return False
    word = m.group(1)
    allowed = _LETTER_VERBS if letter == "A" else _I_VERBS
    return word not in allowed


_TEXT_OPENER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{")
_LETTER_IN_BOX = re.compile(r"[\s(\[]*([A-Za-z])(?=[\s.:)\]]|$)")
# (As in _FINAL: each quantified run is followed by something it cannot match, so matching stays linear.)
_CUE = re.compile(
    r"(?:\banswer\b[\s*]*(?:(?:is|would\s+be|should\s+be|must\s+be|will\s+be)\b|:|=)"
    r"|\bcorrect\s+(?:option|choice|answer|letter)\b(?:[\s*]*(?:is|would\s+be)\b)?"
    r"|\b(?:option|choice)\s*:)"
    r"[\s:*$]*(?:(?:option|choice|letter)\b[\s:*$]*)?"
    r"(?:(?:[(\[]|\\text(?:bf)?\{|\\mathrm\{)[\s*$]*){0,3}"
    r"(?P<letter>[A-Za-z])"
    r"(?=[\s\)\]\}\*\$\.,:;!?]|$)",
    re.IGNORECASE,
)
_OPTION_IS_CORRECT = re.compile(
    r"\b(?:option|choice)\s*[\(\[]?(?P<letter>[A-Z])[\)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best)",
    re.IGNORECASE,
)
_FORMATTED = re.compile(
    r"(?<![\w\\])\((?P<a>[A-Z])\)"  # (B), not P(A) / f(B)
    r"|(?<![\w(\[\\])(?P<b>[A-Z])\)"  # B), not f(B)
    r"|\*\*\s*\(?(?P<c>[A-Z])\)?\s*\.?\*\*"  # **B**, **(B)**
    r"|(?<![\w.\\])(?P<d>[A-Z])[.)]?[\s*]*$"  # a letter ending the text: "... B." / "B"
)
_STANDALONE = re.compile(r"(?<![\w\\'-])(?<!\w\()([A-Z])(?![\w'-])")  # not inside a word, a command or P(A)


def _last(candidates: list[tuple[int, str]], allowed: str) -> str | None:
    best = None
    for pos, letter in candidates:
        letter = letter.upper()
        if letter in allowed and (best is None or pos >= best[0]):
            best = (pos, letter)
    return None if best is None else best[1]


def extract_choice(text: str | None, n_choices: int | None = 4, letters: str | None = None) -> str | None:
    """The chosen option letter (upper case) of a multiple-choice answer, or None (rules: module docstring)."""
    try:
        if not isinstance(text, str) or not text.strip():
            return None
        allowed = choice_letters(n_choices, letters)
        # Tier 1: explicit answers.
        found: list[tuple[int, str]] = []
        for start, _end, content in _iter_boxed(text):
            m = _LETTER_IN_BOX.match(_TEXT_OPENER.sub("", content).replace("$", " ").replace("}", " "))
            if m:
                found.append((start, m.group(1)))
        for m in _CUE.finditer(text):
            letter = m.group("letter")
            wrapped = text[m.start("letter") - 1] in "(*[{$"
            if not wrapped and (letter.islower() or _is_word(text, m.end("letter"), letter)):
                continue
            found.append((m.start("letter"), letter))
        for m in _OPTION_IS_CORRECT.finditer(text):
            if m.group("letter").isupper():
                found.append((m.start("letter"), m.group("letter")))
        answer = _last(found, allowed)
        if answer:
            return answer
        # Tier 2: formatted letters.
        found = []
        for m in _FORMATTED.finditer(text.rstrip()):
            for g in "abcd":
                if m.group(g):
                    found.append((m.start(g), m.group(g)))
        answer = _last(found, allowed)
        if answer:
            return answer
        # Tier 3: the last standalone capital letter that is not an article / pronoun.
        found = [(m.start(1), m.group(1)) for m in _STANDALONE.finditer(text)
                 if not _is_word(text, m.end(1), m.group(1))]
        return _last(found, allowed)
    except Exception:  # noqa: BLE001 - extraction never raises
        return None


def check_choice(
    gold_letter: object, text: str | None, n_choices: int | None = 4, letters: str | None = None
) -> Verdict:
    """Extract the chosen letter from `text` and compare it with `gold_letter` ("B", "(B)", "b" all mean B)."""
    try:
        allowed = choice_letters(n_choices, letters)
        gold = as_text(gold_letter, "gold")
        gold = (gold or "").strip().strip("()[].").strip().upper()
        if len(gold) != 1 or gold not in allowed:
            return Verdict(False, "unparseable_gold")
        pred = extract_choice(text, n_choices, letters)
        if pred is None:
            return Verdict(False, "no answer")
        return Verdict(pred == gold, "correct" if pred == gold else "wrong")
    except Exception as exc:  # noqa: BLE001 - a checker never raises
        return Verdict(False, f"error: {type(exc).__name__}: {str(exc)[:200]}")
