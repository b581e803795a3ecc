"""Users' own problems as people have them: a JSONL / JSON / CSV / TSV / Parquet file, a `save_to_disk` folder, or a
`datasets` name (with its config name and split), with question / trace / answer columns.

Reading. Text files may start with a UTF-8 BOM and end lines with CRLF. A path may hold `~` and environment
variables (`$HOME`, `${DATA}`), expanded here. A folder that `save_to_disk` did not write is refused in one line
(listing what it holds) and never handed to `datasets.load_dataset`, which would read every file in it and write
a cache under ~/.cache: a run leaves nothing outside its folder. Only a string shaped like a hub id
(`name` or `owner/name`) that is no local path goes to `load_dataset`.

CSV / TSV are read with Python's `csv` module rather than `datasets`' CSV builder or pandas: it gives the exact line
where each record starts (quoted newlines included), writes no cache, keeps every cell as the text it is (an answer
"007" stays "007"; numbers in CSV are text, so "42" is a fine answer and "3" a fine difficulty) and needs no
dtype guessing. The first line is the header; an empty cell is a missing value; blank lines are skipped.

Checking. Every row is checked and every bad row is reported, in one InputError (the first `MAX_REPORTED`, then a
count), each with its 1-based place in the file: "line N" for JSONL and CSV (the line where the record starts),
"record N" for a JSON array, "row N" for Parquet and `datasets`. No row is ever dropped silently. Rules:
- question and trace: non-empty strings; answer: a non-empty string or a number (kept as its text);
- difficulty (only when `difficulty_column` is given): an integer (or integer-valued float / numeric text);
  a missing value is 0, and without a difficulty column every row gets 0, meaning "not given"
  (built-in levels start at 1);
- solution (only when `solution_column` is given): a non-empty string, kept in `meta["solution"]` (the hint of
  `posterior.hint: solution`);
- held-out rows (`held_out=True`, `task.test_source`) need only question and answer: evaluation reads nothing else,
  so a trace, solution or difficulty is kept when given and otherwise "" / absent / 0;
- an `id` column, when present, gives the problem id; otherwise it is `user-<index>` (0-based).
Problems get task "user", style "given", and meta source, row (0-based index), line and unit (where the row is).

Rows in Bespoke-Stratos-17k's schema (a `conversations` column and no question column, e.g.
`task.source: bespokelabs/Bespoke-Stratos-17k`) are read by `tasks.stratos`: question = the user turn, trace = the
thought section, answer = the solution's last `\\boxed{}`, and the solution section itself in `meta["solution"]`
(the paper's answer hint); the question / trace / answer column names are not used for them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

from varreason.errors import InputError, all_in_one, decode_utf8
from varreason.tasks.base import Problem
from varreason.tasks.stratos import is_stratos, stratos_problem

USER_TASK = "user"
BOM = b"\xef\xbb\xbf"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # what `load_dataset` may take: `name` or `owner/name`
csv.field_size_limit(2**31 - 1)  # a long trace is one cell; the default limit (128 KiB) would refuse it

# A read row: its 1-based place in the file and the record, or the InputError that says why it is not one.
Located = tuple[int, "dict | InputError"]


def _json_line(raw: bytes) -> dict | str | None:
    """One line of JSON lines: its record, None when blank, or why it is no record."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg}"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    return record if isinstance(record, dict) else f"must be a JSON object, got {type(record).__name__}"


def _json_lines(data: bytes, source: str) -> list[Located]:
    rows: list[Located] = []
    for line_no, raw in enumerate(data.removeprefix(BOM).split(b"\n"), start=1):
        record = _json_line(raw)
        if isinstance(record, str):
            record = InputError(record, file=source, row=len(rows), line=line_no)
        if record is not None:
            rows.append((line_no, record))
    return rows


def _read_jsonl(path: Path, source: str) -> tuple[str, list[Located]]:
    return "line", _json_lines(path.read_bytes(), source)


def _read_json(path: Path, source: str) -> tuple[str, list[Located]]:
    data = path.read_bytes()
    try:
        parsed = json.loads(decode_utf8(data.removeprefix(BOM), source, None))
    except (json.JSONDecodeError, RecursionError):
        return "line", _json_lines(data, source)  # JSON lines saved as .json
    if isinstance(parsed, dict) and isinstance(parsed.get("data"), list):
        parsed = parsed["data"]
    if isinstance(parsed, dict) and parsed and all(isinstance(v, list) for v in parsed.values()):
        lengths = {len(v) for v in parsed.values()}
        if len(lengths) != 1:
            raise InputError("columns have different lengths", file=source)
        parsed = [dict(zip(parsed, values)) for values in zip(*parsed.values())]
    if not isinstance(parsed, list):
        raise InputError("expected a list of records (or JSON lines)", file=source)
    return "record", [(i, r if isinstance(r, dict) else InputError(
        f"must be a JSON object, got {type(r).__name__}", file=source, row=i - 1, line=i, unit="record"))
        for i, r in enumerate(parsed, start=1)]


def _read_csv(path: Path, source: str) -> tuple[str, list[Located]]:
    """Rows of a CSV (or, by suffix, TSV) file; each is placed at the line where it starts."""
    text = decode_utf8(path.read_bytes().removeprefix(BOM), source)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",",
                        strict=True)  # an unclosed or stray quote is an error, not a silently merged cell
    header: list[str] | None = None
    rows: list[Located] = []
    start = 1
    try:
        for cells in reader:
            line_no, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = cells
                twice = sorted({c for c in cells if c and cells.count(c) > 1})
                if twice:
                    raise InputError(f"the header repeats column names {twice}", file=source, line=line_no)
                continue
            if len(cells) > len(header):
                rows.append((line_no, InputError(f"{len(cells)} cells, the header has {len(header)}", file=source,
                                                 row=len(rows), line=line_no)))
                continue
            rows.append((line_no, {name: cells[j] if j < len(cells) and cells[j] != "" else None
                                   for j, name in enumerate(header)}))
    except csv.Error as exc:  # the reader cannot go on past it: the rows before it are reported too
        rows.append((start, InputError(f"not valid CSV: {exc}", file=source, row=len(rows), line=start)))
    return "line", rows


def _read_parquet(path: Path, source: str) -> tuple[str, list[Located]]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - a corrupt file is the user's input
        raise InputError(f"cannot read Parquet: {type(exc).__name__}: {exc}", file=source) from None
    return "row", list(enumerate(records, start=1))


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv,
           ".parquet": _read_parquet, ".pq": _read_parquet}


def _folder(path: Path, source: str, split: str) -> list[dict]:
    """A `save_to_disk` folder's rows (a DatasetDict: the split's); any other folder is one clear line."""
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        names = sorted(p.name for p in path.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise InputError(f"is a folder: give one data file (it holds {len(names)} files"
                         f"{': ' + shown if names else ''}) or a `datasets` save_to_disk folder", file=source)
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged folder is the user's input
        raise InputError(f"cannot read the save_to_disk folder: {type(exc).__name__}: {exc}", file=source) from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise InputError(f"no split '{split}' (splits: {', '.join(data)})", file=source, field="split")
        data = data[split]
    return [dict(row) for row in data]


def _hub(source: str, split: str, name: str | None) -> list[dict]:
    try:
        import datasets

        data = datasets.load_dataset(source, name=name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline hub, unknown name, bad config or split: one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        config = f"config '{name}', " if name else ""
        raise InputError(f"cannot load as a `datasets` name ({config}split '{split}'): {type(exc).__name__}: {first}",
                         file=source) from None
    return [dict(row) for row in data]


def local_path(source: str) -> str:
    """`source` with `~` and environment variables expanded (a hub name has neither, so it is unchanged)."""
    return os.path.expanduser(os.path.expandvars(str(source)))


def read_located(source: str, split: str = "train", name: str | None = None) -> tuple[str, str, list[Located]]:
    """(the expanded source, the unit of its places, its rows): a file, a `save_to_disk` folder or a `datasets` name
    (`name`: its config name). A row that cannot be read is an InputError in the list, so that all are reported."""
    source = local_path(source)
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_dir():
        return source, "row", list(enumerate(_folder(path, source, split), start=1))
    if path.is_file():
        if suffix not in READERS:
            raise InputError(f"unknown file type '{suffix}': give .jsonl, .json, .csv, .tsv or .parquet", file=source)
        return (source, *READERS[suffix](path, source))
    unset = re.search(r"\$\{?(\w+)", source)
    if unset:
        raise InputError(f"not found (the environment variable {unset.group(1)} is not set)", file=source)
    if suffix in READERS or not HUB_ID.fullmatch(source):
        raise InputError("file not found", file=source)
    return source, "row", list(enumerate(_hub(source, split, name), start=1))


def read_records(source: str, split: str = "train") -> list[dict]:
    """Rows of a data file, a `save_to_disk` folder, or a `datasets` name; any unreadable row: one InputError."""
    source, _, rows = read_located(source, split)
    bad = [r for _, r in rows if isinstance(r, InputError)]
    if bad:
        raise all_in_one(bad, source)
    return [r for _, r in rows]


def _text(value: object, column: str, allow_number: bool = False) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise InputError("empty value", field=column)
        return value
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"not a finite number: {value!r}", field=column)
        return str(value)
    if value is None:
        raise InputError("missing value", field=column)
    kind = "a string or a number" if allow_number else "a string"
    raise InputError(f"expected {kind}, got {type(value).__name__}", field=column)


def _difficulty(value: object, column: str) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    if isinstance(value, bool):
        raise InputError("expected an integer, got bool", field=column)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InputError(f"expected an integer, got {value!r}", field=column)


def _problem(record: dict, source: str, index: int, columns: dict, stratos: bool, held_out: bool) -> Problem:
    """One record as a Problem (the caller sets its id and place); an InputError names the field."""
    q, t, a, d, s = (columns[k] for k in ("question", "trace", "answer", "difficulty", "solution"))
    wanted = ([] if stratos else [q, a]) + ([] if held_out else [d] if stratos else [t, d, s])
    for column in filter(None, wanted):
        if column not in record:
            raise InputError(f"missing column (columns: {', '.join(map(str, record)) or 'none'})", field=column)
    if stratos:
        p = stratos_problem(record, source, index)
        question, trace, answer, meta = p.question, p.trace, p.answer, p.meta
    else:
        question = _text(record[q], q)
        answer = _text(record[a], a, allow_number=True)
        given = record.get(t)
        trace = (given if isinstance(given, str) else "") if held_out else _text(given, t)
        meta = {"source": source, "row": index}
        given = record.get(s) if s else None
        if s and (not held_out or isinstance(given, str) and given.strip()):
            meta["solution"] = _text(given, s)
    difficulty = _difficulty(record.get(d), d) if d else 0
    return Problem(id="", question=question, answer=answer.strip(), trace=trace, task=USER_TASK,
                   difficulty=difficulty, style="given", meta=meta)


def load_user_problems(source: str, question_column: str = "question", trace_column: str = "trace",
                       answer_column: str = "answer", difficulty_column: str | None = None, split: str = "train",
                       solution_column: str | None = None, dataset_config: str | None = None,
                       held_out: bool = False) -> list[Problem]:
    """Problems from a user's file or `datasets` name (`dataset_config`: its config name); every bad row is reported
    in one InputError. `held_out`: rows of `task.test_source`, which need only question and answer."""
    source, unit, rows = read_located(str(source), split, dataset_config)
    if not rows:
        raise InputError("no rows", file=source)
    columns = {"question": question_column, "trace": trace_column, "answer": answer_column,
               "difficulty": difficulty_column, "solution": solution_column}
    first = next((r for _, r in rows if isinstance(r, dict)), {})
    stratos = is_stratos(first, question_column)  # the schema is read off the first row's columns
    problems, bad, seen = [], [], {}
    for index, (place, record) in enumerate(rows):
        try:
            if isinstance(record, InputError):
                raise record
            p = _problem(record, source, index, columns, stratos, held_out)
            rid = record.get("id")
            p.id = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip() \
                else f"user-{index}"
            if p.id in seen:
                raise InputError(f"duplicate id '{p.id}' (first at {unit} {seen[p.id]})", field="id")
        except InputError as exc:
            bad.append(InputError(exc.message, file=source, row=index, field=exc.field, line=place, unit=unit))
            continue
        seen[p.id] = place
        p.meta.update(line=place, unit=unit)
        problems.append(p)
    if bad:
        raise all_in_one(bad, source)
    return problems
