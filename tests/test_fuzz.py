"""Property-based fuzzing of what the tool reads: random bytes, wrong JSON types, NaN and infinite numbers, empty and
duplicate rows, wrong Parquet dtypes and hostile YAML. The only failure allowed is an InputError (one line naming the
file, row and field); never another exception. 200 cases per property (hypothesis)."""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varreason.config import RunConfig, load_config, set_value
from varreason.errors import InputError
from varreason.eval.benchmarks import load_benchmark
from varreason.tasks.user import load_user_problems, read_records

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
columns = st.sampled_from(["question", "trace", "answer", "difficulty", "solution", "id", "choices", "tests", "x"])
rows = st.lists(st.dictionaries(columns, json_values, max_size=6), max_size=5)


def _only_input_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except InputError as exc:
        assert "\n" not in exc.line()
        return None


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".parquet"]))
def test_random_bytes_in_a_data_file(tmp_path, data, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(data)
    _only_input_errors(load_user_problems, str(path))
    _only_input_errors(load_benchmark, str(path))


@FUZZ
@given(records=rows, duplicate=st.booleans(), as_json=st.booleans())
def test_wrong_json_types_empty_and_duplicate_rows(tmp_path, records, duplicate, as_json):
    if duplicate and records:
        records = records + [records[0]]
    path = tmp_path / ("d.json" if as_json else "d.jsonl")
    text = json.dumps(records) if as_json else "\n".join(json.dumps(r) for r in records)  # NaN/Infinity literals too
    path.write_text(text)
    problems = _only_input_errors(load_user_problems, str(path), difficulty_column="difficulty",
                                  solution_column="solution")
    for p in problems or []:
        assert p.question.strip() and p.trace.strip() and str(p.answer).strip() and p.meta["solution"].strip()
    if problems is not None:
        assert len(problems) == len(records)  # never a silently dropped row
    _only_input_errors(load_benchmark, str(path))


@FUZZ
@given(values=st.lists(st.one_of(st.integers(), st.floats(), st.binary(max_size=5), st.booleans()), min_size=1,
                       max_size=4),
       column=st.sampled_from(["question", "trace", "answer", "difficulty"]))
def test_wrong_parquet_dtypes(tmp_path, values, column):
    base = {"question": ["1+1=?"] * len(values), "trace": ["1+1=2"] * len(values), "answer": ["2"] * len(values)}
    try:
        base[column] = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table(base), path)
    _only_input_errors(load_user_problems, str(path), difficulty_column="difficulty" if column == "difficulty" else None)


yaml_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda k, v: f"{k}: {v}\n", st.sampled_from(["initial", "sample", "task", "seed", "eval", "x"]),
              st.sampled_from(["[1, 2]", "{learning_rate: .nan}", "{temperature: -.inf}", "!!python/object:os.system x",
                               "&a [*a]", "{n_train: 1e400}", "null", "{batch_size: '3'}", "{top_p: 0}", "~"])),
)


@FUZZ
@given(text=st.one_of(yaml_text, st.binary(max_size=200)))
def test_hostile_yaml_configs(tmp_path, text):
    path = tmp_path / "c.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)  # random bytes: invalid UTF-8 too
    else:
        path.write_text(text)
    cfg = _only_input_errors(load_config, str(path))
    if cfg is not None:
        assert isinstance(cfg, RunConfig)
        assert all(math.isfinite(v) for v in (cfg.initial.learning_rate, cfg.sample.temperature, cfg.sample.top_p))


KEYS = ["sample.temperature", "initial.learning_rate", "task.n_train", "seed", "task.families", "build.mode",
        "eval.top_p", "rollout.num_generations", "rounds", "posterior.mode", "posterior.hint", "posterior.num_generations",
        "build.weighted_batch", "weights.num_traces", "final.sft_paper", "task.solution_column"]
VALUES = [".nan", "inf", "-1", "0", "1", "3", "9", "1e400", "[", "{a: 1}", "true", "forward_kl", "solution", "scaled"]


@FUZZ
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)),
       value=st.one_of(st.text(max_size=20), st.sampled_from(VALUES)))
def test_command_line_overrides(key, value):
    cfg = RunConfig()
    _only_input_errors(set_value, cfg, key, value)


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), min_size=1, max_size=4))
def test_override_combinations_are_validated_together(pairs):
    """Cross-field rules (num_traces <= K, forward_kl needs rollouts, sft_paper's halvable batch...) as one line too."""
    cfg = _only_input_errors(load_config, "smoke", pairs)
    if cfg is not None:
        assert (cfg.weights.num_traces or 0) <= cfg.sample.num_generations
        assert all(math.isfinite(v) for v in (cfg.initial.learning_rate, cfg.sample.temperature, cfg.eval.top_p))


@pytest.mark.parametrize("line", [b"x" * 2_000_000, b'{"question": "' + b"9" * 1_000_000 + b'"}'])
def test_huge_lines(tmp_path, line):
    path = tmp_path / "d.jsonl"
    path.write_bytes(line + b"\n")
    _only_input_errors(read_records, str(path))
