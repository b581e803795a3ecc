"""Users' own problems: a JSONL / JSON / Parquet file, or a `datasets` name, with question / trace / answer columns.

Every row is checked; a bad one stops the load with an InputError naming the file, the row (0-based record index,
as in `datasets` and pandas) and the field; no row is ever dropped silently. Rules:
- question and trace: non-empty strings; answer: a non-empty string or a number (kept as its text);
- difficulty (only when `difficulty_column` is given): an integer (or integer-valued float / numeric text);
  a missing value (null) is 0, and without a difficulty column every row gets 0, meaning "not given"
  (built-in levels start at 1);
- solution (only when `solution_column` is given): a non-empty string, kept in `meta["solution"]` (the hint of
  `posterior.hint: solution`);
- an `id` column, when present, gives the problem id; otherwise it is `user-<row>`.
Problems get task "user" and style "given".

Rows in Bespoke-Stratos-17k's schema (a `conversations` column and no question column, e.g.
`task.source: bespokelabs/Bespoke-Stratos-17k`) are read by `tasks.stratos`: question = the user turn, trace = the
thought section, answer = the solution's last `\\boxed{}`, and the solution section itself in `meta["solution"]`
(the paper's answer hint); the question / trace / answer column names are not used for them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from varreason.errors import InputError, decode_utf8
from varreason.tasks.base import Problem
from varreason.tasks.stratos import is_stratos, stratos_problem

USER_TASK = "user"


def _parse_lines(data: bytes, source: str) -> list[dict]:
    rows = []
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        line = decode_utf8(raw, source, len(rows), line_no)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise InputError(f"invalid JSON on line {line_no}: {msg}", file=source, row=len(rows)) from None
        if not isinstance(record, dict):
            raise InputError(f"line {line_no} must be a JSON object, got {type(record).__name__}", file=source,
                             row=len(rows))
        rows.append(record)
    return rows


def _read_jsonl(path: Path, source: str) -> list[dict]:
    return _parse_lines(path.read_bytes(), source)


def _read_json(path: Path, source: str) -> list[dict]:
    data = path.read_bytes()
    try:
        parsed = json.loads(decode_utf8(data, source, None))
    except (json.JSONDecodeError, RecursionError):
        return _parse_lines(data, source)  # JSON lines saved as .json
    if isinstance(parsed, dict) and isinstance(parsed.get("data"), list):
        parsed = parsed["data"]
    if isinstance(parsed, dict) and parsed and all(isinstance(v, list) for v in parsed.values()):
        lengths = {len(v) for v in parsed.values()}
        if len(lengths) != 1:
            raise InputError("columns have different lengths", file=source)
        parsed = [dict(zip(parsed, values)) for values in zip(*parsed.values())]
    if not isinstance(parsed, list):
        raise InputError("expected a list of records (or JSON lines)", file=source)
    for i, record in enumerate(parsed):
        if not isinstance(record, dict):
            raise InputError(f"must be a JSON object, got {type(record).__name__}", file=source, row=i)
    return parsed


def _read_parquet(path: Path, source: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - a corrupt file is the user's input
        raise InputError(f"cannot read Parquet: {type(exc).__name__}: {exc}", file=source) from None


def _read_datasets(source: str, split: str) -> list[dict]:
    try:
        import datasets

        path = Path(source)
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            data = datasets.load_from_disk(str(path))  # a folder written by `save_to_disk`
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise InputError(f"no split '{split}' (splits: {', '.join(data)})", file=source, field="split")
                data = data[split]
        else:
            data = datasets.load_dataset(source, split=split)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline hub, unknown name, bad split: one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"cannot load as a file or a `datasets` name (split '{split}'): "
                         f"{type(exc).__name__}: {first}", file=source) from None
    return [dict(row) for row in data]


def read_records(source: str, split: str = "train") -> list[dict]:
    """Rows of a .jsonl / .json / .parquet file, a `save_to_disk` folder, or a `datasets` name."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".parquet", ".pq"}:
        if not path.is_file():
            raise InputError("file not found", file=source)
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".pq": _read_parquet}[suffix]
        return reader(path, source)
    return _read_datasets(source, split)


def _text(value: object, *, source: str, row: int, column: str, allow_number: bool = False) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise InputError("empty value", file=source, row=row, field=column)
        return value
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"not a finite number: {value!r}", file=source, row=row, field=column)
        return str(value)
    if value is None:
        raise InputError("missing value (null)", file=source, row=row, field=column)
    kind = "a string or a number" if allow_number else "a string"
    raise InputError(f"expected {kind}, got {type(value).__name__}", file=source, row=row, field=column)


def _difficulty(value: object, *, source: str, row: int, column: str) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    if isinstance(value, bool):
        raise InputError("expected an integer, got bool", file=source, row=row, field=column)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InputError(f"expected an integer, got {value!r}", file=source, row=row, field=column)


def load_user_problems(source: str, question_column: str = "question", trace_column: str = "trace",
                       answer_column: str = "answer", difficulty_column: str | None = None, split: str = "train",
                       solution_column: str | None = None) -> list[Problem]:
    """Problems from a user's file or `datasets` name; any bad row raises InputError(file, row, field)."""
    source = str(source)
    records = read_records(source, split)
    if not records:
        raise InputError("no rows", file=source)
    stratos = is_stratos(records[0], question_column)  # the schema is read off the first row's columns
    wanted = ([] if stratos else [question_column, trace_column, answer_column]) + (
        [difficulty_column] if difficulty_column else []) + ([solution_column] if solution_column and not stratos else [])
    problems, ids = [], set()
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"expected an object with columns, got {type(record).__name__}", file=source, row=i)
        for column in wanted:
            if column not in record:
                raise InputError(f"missing column (columns: {', '.join(map(str, record)) or 'none'})",
                                 file=source, row=i, field=column)
        if stratos:
            p = stratos_problem(record, source, i)
            question, trace, answer, meta = p.question, p.trace, p.answer, p.meta
        else:
            question = _text(record[question_column], source=source, row=i, column=question_column)
            trace = _text(record[trace_column], source=source, row=i, column=trace_column)
            answer = _text(record[answer_column], source=source, row=i, column=answer_column, allow_number=True)
            meta = {"source": source, "row": i}
            if solution_column:
                meta["solution"] = _text(record[solution_column], source=source, row=i, column=solution_column)
        difficulty = (_difficulty(record[difficulty_column], source=source, row=i, column=difficulty_column)
                      if difficulty_column else 0)
        rid = record.get("id")
        pid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip() else f"user-{i}"
        if pid in ids:
            raise InputError(f"duplicate id '{pid}'", file=source, row=i, field="id")
        ids.add(pid)
        problems.append(Problem(id=pid, question=question, answer=answer.strip(), trace=trace, task=USER_TASK,
                                difficulty=difficulty, style="given", meta=meta))
    return problems
