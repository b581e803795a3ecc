"""The evaluation suite: benchmarks as small declarative specs, and a batched, resumable evaluator.

A spec says where a benchmark's rows come from (a local JSONL / Parquet file, a `datasets` name when a hub is
reachable, or one of our procedural tasks), which fields hold the question / answer / choices / tests, the prompt
template, the answer type (math | choice | code | integer | gym | task) and the default number of samples per problem.
Specs ship for the paper's benchmarks (their data does not: pass `--data FILE` or let `datasets` fetch it).

The prompt template is part of the spec, never hidden: `eval --help` lists every spec's, `results.json` records the
one used, and `--prompt-template` replaces it. A local file's question goes to the model as it is (`{question}`,
inside the reasoning format's chat template, as the run's own eval stage does), so the same model on the same
questions scores the same through `varreason run` and `varreason eval --model`.

A local JSONL row is `{"id", "question", "answer"}` (math; "integer" when every answer is an integer: exact integer
match, as `answer_kind: integer`), `{"id", "question", "choices", "answer"}` (multiple choice; `answer` is the letter
or the choice text) or `{"id", "question", "tests": [{"input", "output"}]}` (code). A run's own `data/*.parquet` (rows
with a `task` column) is "task": each row is checked by its task's verifier, exactly as the run's eval checks it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from varreason.errors import InputError
from varreason.tasks.user import read_records

LETTERS = "ABCDEFGHIJ"
QUESTION_PROMPT = "{question}"  # the question as it is: what the run's eval stage gives the model
MATH_PROMPT = "Return your final response within \\boxed{{}}. {question}"
CHOICE_PROMPT = "{question}\n\n{choices}\n\nAnswer with the letter of the correct option."
CODE_PROMPT = ("{question}\n\nWrite a Python program that reads from standard input and writes to standard output. "
               "Put the program in one ```python code block.")


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    answer_type: str  # math | choice | code | integer
    hf_name: str | None = None  # `datasets` name when the data is on a hub
    hf_config: str | None = None
    hf_split: str = "test"
    fields: dict = field(default_factory=dict)  # our field -> source column (id, question, answer, choices, tests)
    filter_contains: tuple[str, str] | None = None  # (column, substring) a row must contain
    prompt_template: str = MATH_PROMPT
    default_n: int | None = 1  # None: the config's eval.num_generations (a local file, as the run's eval)
    max_completion_length: int = 32768
    builtin: str | None = None  # "sum", "product", "sum,product" or "gym:<dataset>": procedural, offline
    difficulty: str | None = None  # keep only rows of this difficulty (LiveCodeBench easy/medium/hard)


# The paper's evaluation (paper.md §5.5, original-recipe.md §4): default n as in its eval script.
SPECS: dict[str, BenchmarkSpec] = {s.name: s for s in [
    BenchmarkSpec("math500", "math", "HuggingFaceH4/MATH-500", hf_split="test",
                  fields={"id": "unique_id", "question": "problem", "answer": "answer"}, default_n=2),
    BenchmarkSpec("aime24", "math", "AI-MO/aimo-validation-aime", hf_split="train",
                  fields={"id": "id", "question": "problem", "answer": "answer"}, filter_contains=("url", "2024"),
                  default_n=32),
    BenchmarkSpec("aime25", "math", "zhouxiangxin/AIME2025", hf_split="train",
                  fields={"question": "problem", "answer": "answer"},
                  prompt_template="{question}\nReturn your final response within \\boxed{{}}", default_n=32),
    BenchmarkSpec("amc23", "math", "AI-MO/aimo-validation-amc", hf_split="train",
                  fields={"id": "id", "question": "problem", "answer": "answer"}, filter_contains=("url", "2023"),
                  default_n=32),
    BenchmarkSpec("olympiadbench", "math", "Hothan/OlympiadBench", hf_config="OE_TO_maths_en_COMP",
                  hf_split="train", fields={"id": "id", "question": "question", "answer": "final_answer"},
                  default_n=2),
    BenchmarkSpec("gpqa_diamond", "choice", "Idavidrein/gpqa", hf_config="gpqa_diamond", hf_split="train",
                  fields={"question": "Question", "answer": "Correct Answer",
                          "choices": ["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                      "Incorrect Answer 3"]},
                  prompt_template=CHOICE_PROMPT, default_n=8),
    BenchmarkSpec("mmlu_pro", "choice", "TIGER-Lab/MMLU-Pro", hf_split="test",
                  fields={"id": "question_id", "question": "question", "choices": "options", "answer": "answer"},
                  prompt_template=CHOICE_PROMPT, default_n=1),
    *[BenchmarkSpec(f"livecodebench_{level}", "code", "livecodebench/code_generation_lite",
                    hf_config="release_v2", hf_split="test",
                    fields={"id": "question_id", "question": "question_content", "tests": "public_test_cases"},
                    prompt_template=CODE_PROMPT, default_n=8, difficulty=level)
      for level in ("easy", "medium", "hard")],
    # built-in procedural benchmarks: no download, always available
    BenchmarkSpec("arith", "integer", builtin="sum,product", prompt_template="{question}", default_n=1,
                  max_completion_length=256),
    BenchmarkSpec("arith_sum", "integer", builtin="sum", prompt_template="{question}", max_completion_length=256),
    BenchmarkSpec("arith_product", "integer", builtin="product", prompt_template="{question}",
                  max_completion_length=256),
    BenchmarkSpec("gym_basic_arithmetic", "gym", builtin="gym:basic_arithmetic", prompt_template="{question}",
                  max_completion_length=256),
    BenchmarkSpec("gym_chain_sum", "gym", builtin="gym:chain_sum", prompt_template="{question}",
                  max_completion_length=256),
]}


@dataclass
class BenchItem:
    """One problem of a benchmark, in our fields."""

    id: str
    question: str
    answer: str = ""
    choices: list[str] | None = None
    tests: list[dict] | None = None
    difficulty: str = ""
    meta: dict = field(default_factory=dict)  # e.g. the reasoning-gym entry to score with


def _letter_answer(answer, choices: list[str], path: str, row: int) -> str:
    answer = str(answer).strip()
    if len(answer) == 1 and answer.upper() in LETTERS[: len(choices)]:
        return answer.upper()
    if answer in choices:
        return LETTERS[choices.index(answer)]
    raise InputError(f"answer {answer!r} is neither a letter nor one of the choices", file=path, row=row,
                     field="answer")


def _item(row: dict, i: int, spec: BenchmarkSpec, source: str, local: bool, rng: random.Random) -> BenchItem:
    f = {} if local else spec.fields

    def get(name: str, required: bool = True):
        column = f.get(name, name)
        if column not in row or row[column] in (None, ""):
            if required:
                raise InputError("missing or empty", file=source, row=i, field=column)
            return None
        return row[column]

    question = get("question")
    if not isinstance(question, str):
        raise InputError(f"must be text, got {type(question).__name__}", file=source, row=i, field="question")
    item = BenchItem(id=str(get("id", required=False) or f"{spec.name}-{i}"), question=question,
                     difficulty=str(row.get("difficulty", "") or ""))
    kind = spec.answer_type
    if kind == "choice":
        columns = f.get("choices", "choices")
        if isinstance(columns, list):  # GPQA: the correct answer and three distractors, shuffled with a seeded RNG
            choices = [str(row[c]).strip() for c in columns]
            correct = choices[0]
            rng.shuffle(choices)
            item.choices, item.answer = choices, LETTERS[choices.index(correct)]
        else:
            choices = get("choices")
            if not isinstance(choices, list) or len(choices) < 2:
                raise InputError("must be a list of at least 2 choices", file=source, row=i, field=columns)
            item.choices = [str(c) for c in choices]
            item.answer = _letter_answer(get("answer"), item.choices, source, i)
    elif kind == "code":
        tests = get("tests")
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError:
                raise InputError("tests must be a list or its JSON text", file=source, row=i, field="tests") from None
        if not isinstance(tests, list) or not tests or not all(isinstance(t, dict) and "input" in t
                                                               and "output" in t for t in tests):
            raise InputError("tests must be a non-empty list of {input, output}", file=source, row=i, field="tests")
        item.tests = [{"input": str(t["input"]), "output": str(t["output"])} for t in tests]
    else:
        answer = get("answer")
        item.answer = str(answer[0] if isinstance(answer, list) and answer else answer)
        if local and kind in ("integer", "task"):
            item.meta["problem"] = _problem_row(row, i, item, kind, source)
    return item


def _problem_row(row: dict, i: int, item: BenchItem, kind: str, source: str) -> dict:
    """A local row as a `Problem` row for `score_problem`: a run's data row keeps its task and meta, so its task's
    verifier checks it (as in the run's eval); a plain integer row is checked by exact integer match."""
    if kind == "integer":
        return {"id": item.id, "question": item.question, "answer": item.answer, "trace": "", "task": "file",
                "difficulty": 0, "meta": {"answer_kind": "integer"}}
    difficulty = row.get("difficulty")
    return {"id": item.id, "question": item.question, "answer": item.answer, "trace": str(row.get("trace") or ""),
            "task": row["task"], "difficulty": difficulty if isinstance(difficulty, int) else 0,
            "style": str(row.get("style") or "given"), "meta": _meta(row, i, source)}


def _meta(row: dict, i: int = 0, source: str = "") -> dict:
    """A row's `meta`: a mapping, or its JSON text as the run's Parquet files keep it."""
    meta = row.get("meta") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            raise InputError("must be a JSON object", file=source, row=i, field="meta") from None
    if not isinstance(meta, dict):
        raise InputError("must be a JSON object", file=source, row=i, field="meta")
    return meta


def _is_run_row(row: dict) -> bool:
    """A row of a run's data/*.parquet (or written from one): our task's name, or the answer kind a run recorded."""
    task = row.get("task")
    if not isinstance(task, str):
        return False
    from varreason.tasks import TASKS

    try:
        return task in TASKS or task.startswith("gym:") or "answer_kind" in _meta(row)
    except InputError:
        return False


def _is_integer(answer: object) -> bool:
    if isinstance(answer, int) and not isinstance(answer, bool):
        return True
    return isinstance(answer, str) and re.fullmatch(r"\s*[-+]?\d+\s*", answer) is not None


def infer_answer_type(rows: list[dict]) -> str:
    """A local file's answer type from its columns and answers (module docstring)."""
    if "tests" in rows[0]:
        return "code"
    if "choices" in rows[0]:
        return "choice"
    if all(_is_run_row(r) for r in rows):
        return "task"
    if all(_is_integer(r.get("answer")) for r in rows):
        return "integer"
    return "math"


LOCAL_PROMPTS = {"math": QUESTION_PROMPT, "integer": QUESTION_PROMPT, "task": QUESTION_PROMPT,
                 "choice": CHOICE_PROMPT, "code": CODE_PROMPT}  # a file's template per answer type
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


def is_file_name(name: str) -> bool:
    """A --benchmark that names a local file rather than a spec."""
    return name not in SPECS and Path(name).suffix in FILE_SUFFIXES


def reads_data(name: str) -> bool:
    """Whether a --benchmark takes its rows from --data: a spec of a hub data set (not a file, not a built-in)."""
    return name in SPECS and not SPECS[name].builtin


def check_prompt_template(template: str, answer_type: str | None = None) -> None:
    """A --prompt-template: a format string with {question}, {choices} for multiple choice, and nothing else."""
    def bad(message: str) -> InputError:
        return InputError(f"--prompt-template {template!r}: {message}")

    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise bad(f"{exc} (a literal brace is written twice: {{{{ }}}})") from None
    unknown = sorted(names - {"question", "choices"})
    if unknown:
        raise bad(f"unknown placeholder {{{unknown[0]}}}; the placeholders are {{question}} and {{choices}} (a literal "
                  "brace is written twice)")
    try:
        template.format(question="", choices="")
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise bad(f"{exc}") from None
    if "question" not in names:
        raise bad("must contain {question}")
    if answer_type == "choice" and "choices" not in names:
        raise bad("a multiple-choice benchmark's template needs {choices} (the options)")
    if answer_type not in (None, "choice") and "choices" in names:
        raise bad(f"{{choices}} is for multiple-choice benchmarks; this one is {answer_type}")


def _no_data(name: str) -> InputError:
    what = "is its own data" if is_file_name(name) else "is generated here"
    return InputError(f"--data: '{name}' {what} and reads no --data; to evaluate your file, pass it as "
                      "--benchmark FILE")


def check_request(benchmarks: list[str], data: str | None = None, prompt_template: str | None = None) -> None:
    """What an `eval --model` can be refused for before a model loads: an unknown name, a missing file, --data that
    no benchmark reads (a built-in is generated here, a file is its own data) or that two would, a bad template."""
    if prompt_template is not None:
        check_prompt_template(prompt_template)
    for name in benchmarks:
        if is_file_name(name) and not Path(name).is_file():
            raise InputError("benchmark file not found", file=name)
        if name not in SPECS and not is_file_name(name):
            raise _unknown(name)
        if prompt_template is not None and name in SPECS:
            check_prompt_template(prompt_template, SPECS[name].answer_type)
    readers = [name for name in benchmarks if reads_data(name)]
    if data is not None and not readers:
        raise _no_data(benchmarks[0])
    if data is not None and len(readers) > 1:
        raise InputError(f"--data holds one benchmark's rows, and {', '.join(readers)} would all read it; evaluate "
                         "them in separate commands")


def _unknown(name: str) -> InputError:
    import difflib

    close = difflib.get_close_matches(name, list(SPECS), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return InputError(f"unknown benchmark '{name}' ({hint}known: {', '.join(SPECS)}; or a "
                      f"{'/'.join(FILE_SUFFIXES)} file)", field="benchmark")


def load_benchmark(name_or_file: str, data: str | None = None, limit: int | None = None, seed: int = 0,
                   n_builtin: int = 200, prompt_template: str | None = None) -> tuple[BenchmarkSpec, list[BenchItem]]:
    """A spec and its items: a spec name (data from `data`, else from the hub), a built-in name, or a file;
    `prompt_template` replaces the spec's template."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"--limit must be an integer >= 1 (the first N problems), got {limit!r}")
    spec, items = _load(name_or_file, data, limit, seed, n_builtin)
    if prompt_template is not None:
        check_prompt_template(prompt_template, spec.answer_type)
        spec = dataclasses.replace(spec, prompt_template=prompt_template)
    return spec, items


def _load(name_or_file, data, limit, seed, n_builtin) -> tuple[BenchmarkSpec, list[BenchItem]]:
    path = Path(name_or_file)
    if data is not None and not reads_data(name_or_file):
        raise _no_data(name_or_file)
    if is_file_name(name_or_file):
        if not path.exists():
            raise InputError("benchmark file not found", file=str(path))
        rows = read_records(str(path))
        if not rows:
            raise InputError("no rows", file=str(path))
        kind = infer_answer_type(rows)
        spec = BenchmarkSpec(path.stem, kind, prompt_template=LOCAL_PROMPTS[kind], default_n=None)
        return spec, _items(rows, spec, str(path), local=True, limit=limit, seed=seed)
    if name_or_file not in SPECS:
        raise _unknown(name_or_file)
    spec = SPECS[name_or_file]
    if spec.builtin:
        return spec, _builtin_items(spec, n_builtin if limit is None else limit, seed)
    if data:
        rows, source, local = read_records(data), data, True
    else:
        rows, source, local = _rows_from_hub(spec), spec.hf_name, False
    if spec.filter_contains and not local:
        column, needle = spec.filter_contains
        rows = [r for r in rows if needle in str(r.get(column, ""))]
    if spec.difficulty:
        rows = [r for r in rows if str(r.get("difficulty", "")) == spec.difficulty]
    return spec, _items(rows, spec, source, local=local, limit=limit, seed=seed)


def _items(rows, spec, source, local, limit, seed) -> list[BenchItem]:
    rng = random.Random(seed)
    items = [_item(r, i, spec, source, local, rng) for i, r in enumerate(rows[: limit or None])]
    if len({it.id for it in items}) != len(items):
        raise InputError("duplicate problem ids", file=source, field="id")
    return items


def _rows_from_hub(spec: BenchmarkSpec) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.hf_name, spec.hf_config, split=spec.hf_split)
    except Exception as exc:  # noqa: BLE001 - offline, gated, or renamed: one line for the user
        raise InputError(f"cannot load {spec.hf_name} ({type(exc).__name__}); the data is not shipped: pass "
                         f"--data FILE (a .jsonl/.json/.csv/.tsv/.parquet of this benchmark)", field="benchmark") from None
    return list(ds)


def _builtin_items(spec: BenchmarkSpec, n: int, seed: int) -> list[BenchItem]:
    from varreason.tasks import build_splits

    names = spec.builtin.split(",")
    difficulties = [1] if names[0].startswith("gym:") else [1, 2, 3, 4, 5]
    # The split of a question is a seeded hash against n_test / (n_train + n_test); with the demo's ratio (4000 :
    # 500) these are held-out questions of any run with the same seed and ratio, never its training questions.
    _, test = build_splits(names, 8 * n, n, seed, difficulties)
    return [BenchItem(id=p.id, question=p.question, answer=p.answer, difficulty=str(p.difficulty),
                      meta={"problem": p.to_row()}) for p in test]


def describe_specs() -> str:
    """Every spec with its answer type, default n and prompt template, one a line (`eval --help`)."""
    def shown(template: str) -> str:
        return '"' + template.replace("\n", "\\n") + '"'

    rows = [(spec.name, spec.answer_type, str(spec.default_n), spec.prompt_template) for spec in SPECS.values()]
    rows += [("FILE", "math, integer, task", "eval.num_generations", QUESTION_PROMPT),
             ("FILE", "choice", "eval.num_generations", CHOICE_PROMPT),
             ("FILE", "code", "eval.num_generations", CODE_PROMPT)]
    return "\n".join(f"  {name:<21} {kind:<20} n={n:<4} {shown(template)}" for name, kind, n, template in rows)


def render_question(spec: BenchmarkSpec, item: BenchItem) -> str:
    choices = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(item.choices or []))
    return spec.prompt_template.format(question=item.question, choices=choices)


# ---------------------------------------------------------------------------------------------------------------
# scoring one sample


def score_sample(spec: BenchmarkSpec, item: BenchItem, text: str, answer_section: str | None,
                 code_time_limit_s: float = 6.0, code_memory_mb: int = 1024):
    """(predicted answer, Verdict) for one generated text; never raises."""
    from varreason.eval.verify import Verdict

    try:
        if spec.answer_type in ("integer", "gym", "task"):
            from varreason.tasks import score_problem
            from varreason.tasks.base import Problem

            row = dict(item.meta["problem"])
            meta = row.get("meta")
            row["meta"] = json.loads(meta) if isinstance(meta, str) else (meta or {})
            predicted = answer_section if answer_section is not None else None
            if predicted is None:
                return None, Verdict(False, "no answer")
            return predicted, score_problem(Problem(**row), predicted)
        if spec.answer_type == "math":
            from varreason.eval.extract import check_math_text, extract_math_answer

            return extract_math_answer(text, answer_section), check_math_text(item.answer, text, answer_section)
        if spec.answer_type == "choice":
            from varreason.eval.extract import check_choice, extract_choice

            source = answer_section if answer_section is not None else text
            n = len(item.choices or [])
            return extract_choice(source, n), check_choice(item.answer, source, n)
        if spec.answer_type == "code":
            from varreason.eval.sandbox import extract_code, run_tests

            result = run_tests(text, item.tests or [], time_limit_s=code_time_limit_s, memory_mb=code_memory_mb)
            return extract_code(text), Verdict(result.passed, result.reason)
        return None, Verdict(False, f"error: unknown answer type {spec.answer_type!r}")
    except Exception as exc:  # noqa: BLE001 - a verifier never crashes an evaluation
        return None, Verdict(False, f"error: {type(exc).__name__}: {exc}")
