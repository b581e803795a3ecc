"""Bespoke-Stratos-17k's schema: a system prompt and a two-turn conversation, read into `Problem`s.

A row is
    {"system": "<the reasoning system prompt>",
     "conversations": [{"from": "user", "value": "<question>"},
                       {"from": "assistant", "value": "<|begin_of_thought|>\\n\\n<thought>\\n\\n<|end_of_thought|>\\n\\n"
                                                      "<|begin_of_solution|>\\n\\n<solution>\\n\\n<|end_of_solution|>"}]}
and becomes a problem with
    question = the user turn;   trace = the thought section (stripped);
    answer   = the content of the last `\\boxed{...}` of the solution section (nested braces matched);
    meta["solution"] = the solution section (stripped): the paper's answer hint y' (App. G) and the reference
                       solution the released recipe trains on and scores (-GML); meta["system"] = the row's system
                       prompt; meta["answer_kind"] = "math".
Rows are recognised by their columns: `is_stratos(record)` is true for a record with a `conversations` column and
no question column (`tasks.user.load_user_problems` calls it, so `task.source` takes Stratos files and `datasets`
names as they are, with no extra config).

Rows without a final answer. Bespoke-Stratos-17k is not all math: about a third of its rows are programming
problems (APPS 3,299, TACO 2,096 of 16,710; `reference/original-recipe.md` §0) whose solution is code, with no
`\\boxed{}`. Stopping at them would make the data set unusable, so the rule is:
- the question asks for a boxed answer (it contains `\\boxed`, as the math rows' "Return your final response
  within \\boxed{}." does) but the solution has none, or the last box never closes, or it is empty: an InputError;
- the question asks for none and the solution has none: the row is kept, its answer is the whole solution section
  and `meta["answer_kind"]` is "none": no verifier can check it (`score_problem` says "unparseable_gold"), so the
  accuracy estimator scores its traces 0 (the question falls back to its teacher trace, and that is counted), while
  the -GML estimator and SFT use the reference solution as for any row. The paper checks these rows by running
  the APPS / TACO test cases, which the Stratos rows do not carry.

Every defect (a conversation that is not a list, a turn that is not a {"from", "value"} object, a missing user or
assistant turn, a missing or misplaced marker, an empty section, text outside the sections) is one InputError naming
the file, the row and the field (`conversations[1].value`, ...); `tasks.user` reports it at the row's 1-based line.
"""

from __future__ import annotations

from varreason.errors import InputError
from varreason.eval.verify import extract_boxed
from varreason.tasks.base import Problem

SCHEMA = "bespoke-stratos"
CONVERSATIONS = "conversations"
THOUGHT_OPEN, THOUGHT_CLOSE = "<|begin_of_thought|>", "<|end_of_thought|>"
SOLUTION_OPEN, SOLUTION_CLOSE = "<|begin_of_solution|>", "<|end_of_solution|>"
NO_VERIFIER = "none"  # meta["answer_kind"] of a row whose solution has no final answer (code)


def is_stratos(record: object, question_column: str = "question") -> bool:
    """A record in Bespoke-Stratos's schema: a `conversations` column and no question column."""
    return isinstance(record, dict) and CONVERSATIONS in record and question_column not in record


def _turns(value: object, source: str, row: int) -> tuple[str, str]:
    """The user and assistant texts of a two-turn conversation."""
    if not isinstance(value, list):
        kind = "null" if value is None else type(value).__name__
        raise InputError(f"expected a list of turns, got {kind}", file=source, row=row, field=CONVERSATIONS)
    texts: dict[str, str] = {}
    roles = []
    for j, turn in enumerate(value):
        where = f"{CONVERSATIONS}[{j}]"
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise InputError('expected an object with "from" and "value"', file=source, row=row, field=where)
        role = turn["from"]
        if role not in ("user", "assistant"):
            raise InputError(f'"from" must be "user" or "assistant", got {role!r}', file=source, row=row,
                             field=f"{where}.from")
        text = turn["value"]
        if not isinstance(text, str) or not text.strip():
            problem = "empty value" if isinstance(text, str) else f"expected a string, got {type(text).__name__}"
            raise InputError(problem, file=source, row=row, field=f"{where}.value")
        roles.append(role)
        texts[role] = text
    if roles != ["user", "assistant"]:
        missing = [r for r in ("user", "assistant") if r not in roles]
        why = f"no {' and no '.join(missing)} turn" if missing else f"turns are {roles}"
        raise InputError(f"expected one user turn then one assistant turn; {why}", file=source, row=row,
                         field=CONVERSATIONS)
    return texts["user"], texts["assistant"]


def split_response(text: str, source: str, row: int, field: str = f"{CONVERSATIONS}[1].value") -> tuple[str, str]:
    """(thought, solution) of an assistant turn, both stripped; an InputError for a missing marker, an empty section
    or text outside the two sections. The thought ends at the first end marker (the cut rule's choice)."""

    def fail(message: str) -> InputError:
        return InputError(message, file=source, row=row, field=field)

    start = text.find(THOUGHT_OPEN)
    if start < 0:
        raise fail(f"missing {THOUGHT_OPEN}")
    end = text.find(THOUGHT_CLOSE, start)
    if end < 0:
        raise fail(f"missing {THOUGHT_CLOSE} after {THOUGHT_OPEN}")
    sol_start = text.find(SOLUTION_OPEN, end)
    if sol_start < 0:
        raise fail(f"missing {SOLUTION_OPEN} after {THOUGHT_CLOSE}")
    sol_end = text.rfind(SOLUTION_CLOSE)
    if sol_end < sol_start:
        raise fail(f"missing {SOLUTION_CLOSE} after {SOLUTION_OPEN}")
    for name, outside in (("before " + THOUGHT_OPEN, text[:start]),
                          (f"between {THOUGHT_CLOSE} and {SOLUTION_OPEN}", text[end + len(THOUGHT_CLOSE):sol_start]),
                          ("after " + SOLUTION_CLOSE, text[sol_end + len(SOLUTION_CLOSE):])):
        if outside.strip():
            raise fail(f"text {name}: {outside.strip()[:40]!r}")
    thought = text[start + len(THOUGHT_OPEN):end].strip()
    solution = text[sol_start + len(SOLUTION_OPEN):sol_end].strip()
    if not thought:
        raise fail("empty thought section")
    if not solution:
        raise fail("empty solution section")
    return thought, solution


def final_answer(question: str, solution: str, source: str, row: int,
                 field: str = f"{CONVERSATIONS}[1].value") -> tuple[str, str]:
    """(answer, answer_kind): the last `\\boxed{...}` of the solution ("math"), or, for a question that asks for no
    boxed answer and a solution without one (code), the whole solution ("none": not verifiable)."""
    answer = extract_boxed(solution)
    if answer is not None and answer.strip():
        return answer.strip(), "math"
    if answer is not None:
        raise InputError("empty \\boxed{} in the solution section", file=source, row=row, field=field)
    if "\\boxed" in solution:
        raise InputError("the last \\boxed{ in the solution section never closes", file=source, row=row, field=field)
    if "\\boxed" in question:
        raise InputError("no \\boxed{...} answer in the solution section, though the question asks for one",
                         file=source, row=row, field=field)
    return solution, NO_VERIFIER


def stratos_problem(record: dict, source: str, row: int) -> Problem:
    """One row in Bespoke-Stratos's schema as a Problem (id, difficulty and the user task are set by the caller)."""
    if CONVERSATIONS not in record:
        raise InputError(f"missing column (columns: {', '.join(map(str, record)) or 'none'})", file=source, row=row,
                         field=CONVERSATIONS)
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise InputError(f"expected a string, got {type(system).__name__}", file=source, row=row, field="system")
    question, response = _turns(record[CONVERSATIONS], source, row)
    thought, solution = split_response(response, source, row)
    answer, kind = final_answer(question, solution, source, row)
    meta = {"source": source, "row": row, "schema": SCHEMA, "solution": solution, "system": system or "",
            "answer_kind": kind}
    return Problem(id="", question=question, answer=answer, trace=thought, task="", difficulty=0, style="given",
                   meta=meta)
