"""Users' own data as people have it: CSV / TSV (BOM, CRLF, quoted newlines), folders, `datasets` names with a config
name and split, `~` and $VARS in paths, held-out files without traces; every bad row reported at once with its 1-based
line; held-out questions that are training questions refused; over-long training rows refused (or dropped, counted)
before the first stage. Files are written by the tests; runs use the smoke preset's tiny model."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varreason.cli import main
from varreason.config import load_config
from varreason.errors import InputError
from varreason.stages import pi0
from varreason.tasks.user import load_user_problems

ROWS = [{"question": f"What is {i}+{i}?", "trace": f"{i}+{i}={2 * i}", "answer": str(2 * i)} for i in range(40)]
LONG = "1234567890" * 60  # 600 digits, 600 tokens: digits are split one by one


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def smoke(**task):
    cfg = load_config("smoke")
    for key, value in task.items():
        setattr(cfg.task, key, value)
    return cfg


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("varreason: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(autouse=True)
def fresh_splits():
    pi0._SPLITS.clear()  # load_splits memoizes per process; every test reads its own files
    yield
    pi0._SPLITS.clear()


# --- formats -----------------------------------------------------------------------------------------------------

def test_csv_with_bom_crlf_and_quoted_newlines_and_tsv(tmp_path):
    csv_path = tmp_path / "mine.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfquestion,trace,answer,level\r\n"
                         b"\"What is\r\n2+2?\",\"2+2=4\",4,3\r\n"
                         b"\r\n"
                         b"1+1?,1+1=2,2,\r\n")
    problems = load_user_problems(str(csv_path), difficulty_column="level")
    assert [(p.question, p.trace, p.answer, p.difficulty) for p in problems] == [
        ("What is\r\n2+2?", "2+2=4", "4", 3), ("1+1?", "1+1=2", "2", 0)]  # numbers are text; an empty cell: missing
    assert [(p.meta["line"], p.meta["row"]) for p in problems] == [(2, 0), (5, 1)]  # where each record starts
    tsv = tmp_path / "mine.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfquestion\ttrace\tanswer\r\nq, with a comma\tt\t007\r\n")
    (p,) = load_user_problems(str(tsv))
    assert (p.question, p.answer) == ("q, with a comma", "007")


def test_every_bad_row_is_reported_with_its_1_based_place(tmp_path):
    rows = [ROWS[0], {"question": "q", "answer": "1"}, ROWS[1], {"question": "", "trace": "t", "answer": "1"}]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n\n{broken\n" + json.dumps(rows[2]) + "\n"
                    + json.dumps(rows[3]) + "\n")
    with pytest.raises(InputError) as err:
        load_user_problems(str(path))
    line = err.value.line()
    assert line.startswith(f"{path}: 3 bad rows: line 2, field 'trace': missing column")
    assert "line 4: invalid JSON" in line and "line 6, field 'question': empty value" in line

    (tmp_path / "d.json").write_text(json.dumps([ROWS[0], {"question": "q", "trace": "t"}]))
    with pytest.raises(InputError, match=r"d.json, record 2, field 'answer': missing column"):
        load_user_problems(str(tmp_path / "d.json"))
    pq.write_table(pa.Table.from_pylist([ROWS[0], {**ROWS[1], "trace": None}]), tmp_path / "d.parquet")
    with pytest.raises(InputError, match=r"d.parquet, row 2 \(1-based\), field 'trace': missing value"):
        load_user_problems(str(tmp_path / "d.parquet"))
    csv_path = tmp_path / "many.csv"
    csv_path.write_text("question,trace,answer\n" + "q,,1\n" * 25)
    with pytest.raises(InputError) as err:
        load_user_problems(str(csv_path))
    assert "25 bad rows: line 2, field 'trace'" in err.value.line() and err.value.line().endswith("... and 5 more")
    assert len(err.value.errors) == 25 and "line 26" not in err.value.line()


def test_a_folder_is_one_line_and_never_handed_to_load_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset called on a folder"))
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(20):
        write_jsonl(folder / f"part-{i:02d}.jsonl", ROWS[:2])
    with pytest.raises(InputError) as err:
        load_user_problems(str(folder))
    assert err.value.line() == (f"{folder}: is a folder: give one data file (it holds 20 files: part-00.jsonl, "
                                "part-01.jsonl, part-02.jsonl, ...) or a `datasets` save_to_disk folder")


def test_a_datasets_name_gets_its_config_name_and_splits(monkeypatch):
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        rows = ROWS if split == "train" else [{"question": "What is 99+1?", "trace": "99+1=100", "answer": "100"}]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = smoke(source="org/sums", dataset_config="easy", test_source="org/sums", test_split="validation")
    splits = pi0.load_splits(cfg)
    assert calls == [("org/sums", "easy", "train"), ("org/sums", "easy", "validation")]
    assert len(splits.train) == 40 and [(p.question, p.trace) for p in splits.test] == [("What is 99+1?", "99+1=100")]
    assert splits.train[3].meta["unit"] == "row" and splits.train[3].meta["line"] == 4


def test_a_save_to_disk_folder_with_a_test_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "dev": datasets.Dataset.from_list([{"question": "What is 99+1?", "answer": "100"}])}
                         ).save_to_disk(str(tmp_path / "saved"))
    splits = pi0.load_splits(smoke(source=str(tmp_path / "saved"), test_source=str(tmp_path / "saved"),
                                   test_split="dev"))
    assert len(splits.train) == 40 and [p.answer for p in splits.test] == ["100"]


def test_home_and_environment_variables_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MYDATA", str(tmp_path / "sub"))
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "sub" / "d.jsonl", ROWS[:3])
    assert len(load_user_problems("~/d.jsonl")) == 2
    assert [p.meta["source"] for p in load_user_problems("${MYDATA}/d.jsonl")] == [str(tmp_path / "sub/d.jsonl")] * 3
    assert len(load_user_problems("$MYDATA/d.jsonl")) == 3
    monkeypatch.delenv("MYDATA")
    with pytest.raises(InputError, match="environment variable MYDATA is not set"):
        load_user_problems("$MYDATA/d.jsonl")


def test_held_out_file_needs_only_question_and_answer(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    test = tmp_path / "test.csv"
    test.write_text("question,answer\nWhat is 50+50?,100\nWhat is 60+60?,120\n")
    splits = pi0.load_splits(smoke(source=train, test_source=str(test)))
    assert [(p.question, p.trace, p.answer) for p in splits.test] == [("What is 50+50?", "", "100"),
                                                                       ("What is 60+60?", "", "120")]
    test.write_text("question,answer\nWhat is 50+50?,\n")
    pi0._SPLITS.clear()
    with pytest.raises(InputError, match=r"test.csv, line 2, field 'answer': missing value"):
        pi0.load_splits(smoke(source=train, test_source=str(test)))


# --- held-out overlap ---------------------------------------------------------------------------------------------

def test_held_out_questions_in_training_are_refused_unless_allowed(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    test = write_jsonl(tmp_path / "test.jsonl", [{"question": "What is 77+77?", "trace": "t", "answer": "154"},
                                                 {"question": "  What is 3+3?\n", "trace": "t", "answer": "6"},
                                                 {"question": "What is 5+5?", "trace": "t", "answer": "10"}])
    with pytest.raises(InputError) as err:
        pi0.load_splits(smoke(source=train, test_source=test))
    line = err.value.line()
    assert line.startswith("field 'task.test_source': 2 of 3 held-out questions are also training questions")
    assert f"{test}, line 2: " in line and f"{test}, line 3: 'What is 5+5?'" in line and "allow_overlap" in line

    out = tmp_path / "run"
    assert main(["data", "--config", "smoke", "--output-dir", str(out), "--task.source", train,
                 "--task.test_source", test, "--task.allow_overlap", "true"]) == 0
    assert "warning: 2 of 3 held-out questions are also training questions" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["stages"]["data"]["counts"]["test_in_train"] == 2


# --- over-long rows -----------------------------------------------------------------------------------------------

def long_rows_files(tmp_path):
    rows = list(ROWS)
    rows[1] = {"question": f"What is {LONG}+1?", "trace": "t", "answer": "1"}  # the prompt alone is too long
    rows[3] = {**rows[3], "trace": LONG}  # the completion makes it too long
    test = write_jsonl(tmp_path / "test.jsonl", [{"question": "What is 99+1?", "trace": "99+1=100", "answer": "100"}])
    return write_jsonl(tmp_path / "mine.jsonl", rows), test


def test_an_over_long_row_is_refused_before_the_first_stage(tmp_path, capsys):
    train, test = long_rows_files(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--task.source", train,
                 "--task.test_source", test]) == 2
    line = error_line(capsys)
    assert f"{train}: 2 training rows too long: line 2: " in line and "line 4: " in line
    assert "tokens > initial.max_length 512" in line and "task.long_rows: drop" in line
    assert not (out / "data").exists() and not (out / "manifest.json").exists()


def test_the_posterior_row_has_its_own_limit(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    cfg = smoke(source=train)
    cfg.posterior.max_length = 20  # q's prompt holds the system prompt and the hint: longer than pi's
    with pytest.raises(InputError) as err:
        pi0.load_splits(cfg)
    assert "tokens > posterior.max_length 20" in err.value.line() and "initial.max_length" not in err.value.line()


def test_over_long_rows_dropped_with_a_count_and_the_base_tokenizer_agrees(tmp_path, capsys):
    from varreason.models import load_tokenizer
    from varreason.runs import RunDir
    from varreason.stages.common import load_problems

    train, test = long_rows_files(tmp_path)
    out = tmp_path / "run"
    argv = ["--config", "smoke", "--output-dir", str(out), "--task.source", train, "--task.test_source", test,
            "--task.long_rows", "drop"]
    assert main(["data", *argv]) == 0
    assert "dropped 2 training rows too long for training (task.long_rows: drop): line 2; line 4" in \
        capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["stages"]["data"]["counts"]["dropped_long_rows"] == 2
    kept = load_problems(RunDir(out), "train")
    assert len(kept) == 38 and LONG not in "".join(p.question + p.trace for p in kept)
    assert main(["base", *argv]) == 0  # the tokenizer base trains on the rows kept: none is too long under it
    cfg = smoke(source=train, test_source=test, long_rows="drop")
    assert pi0.too_long(cfg, kept, load_tokenizer(out / "models/base")) == []
    # the data was made with other lengths: `initial` is refused before it starts, naming the rows
    assert main(["initial", *argv, "--initial.max_length", "16"]) == 2
    line = error_line(capsys)
    assert f"{train}: " in line and "tokens > initial.max_length 16" in line and "varreason data --force" in line


# --- random bytes ---------------------------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv"]))
def test_random_bytes_in_a_csv_are_input_errors(tmp_path, data, suffix):
    path = tmp_path / f"d{suffix}"
    path.write_bytes(b"question,trace,answer\n".replace(b",", b"\t" if suffix == ".tsv" else b",") + data)
    try:
        for p in load_user_problems(str(path)):
            assert p.question.strip() and p.trace.strip() and p.answer.strip()
    except InputError as exc:
        assert "\n" not in exc.line()


def test_with_drop_the_data_stage_depends_on_the_length_limits():
    """Which rows `drop` keeps depends on the tokenizer, templates and limits: they are the data stage's settings
    then (a larger max_length later must make the data again, not keep rows dropped for the old one)."""
    from varreason.config import load_config
    from varreason.pipeline import STAGES

    def data_hash(*overrides):
        return STAGES["data"].config_hash(load_config("smoke", list(overrides)))

    assert data_hash() == data_hash(("initial.max_length", "100"))  # refuse: the data are what the file holds
    drop = ("task.long_rows", "drop")
    assert data_hash(drop) != data_hash(drop, ("initial.max_length", "100"))
    assert data_hash(drop) != data_hash(drop, ("posterior.max_length", "100"))
    assert data_hash(drop) == data_hash(drop, ("initial.learning_rate", "0.1"))
