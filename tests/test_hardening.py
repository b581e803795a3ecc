"""Bad input is one line and exit 2 before any work; one writer per run folder; no partial artifact on a failed write;
the same seed gives the same pi0, bit for bit."""

import errno
import json
import os
import subprocess
import sys

import pytest

from varreason.cli import main
from varreason.errors import InputError
from varreason.runs import RunDir


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("varreason: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- config values: checked before the first stage runs --------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    (["--sample.temperature", "-1"], "'sample.temperature' must be >= 0.0"),
    (["--initial.learning_rate", ".nan"], "'initial.learning_rate' must be a finite number"),
    (["--initial.learning_rate", "inf"], "'initial.learning_rate' must be a finite number"),
    (["--sample.top_p", "0"], "'sample.top_p' must be > 0.0"),
    (["--sample.top_p", "1.5"], "'sample.top_p' must be <= 1.0"),
    (["--eval.batch_size", "0"], "'eval.batch_size' must be >= 1"),
    (["--rollout.num_generations", "-2"], "'rollout.num_generations' must be >= 0"),
    (["--initial.max_steps", "0"], "'initial.max_steps' must be -1"),
    (["--initial.warmup_ratio", "2"], "'initial.warmup_ratio' must be <= 1.0"),
    (["--weights.estimator", "gmll"], "'weights.estimator' must be one of"),
    (["--grpo.temperature", "0"], "'grpo.temperature' must be > 0.0"),
    (["--task.style_mix", "{careful: -1}"], "'task.style_mix.careful' must be a finite number >= 0"),
    (["--seed", "-3"], "'seed' must be >= 0"),
])
def test_bad_config_values_stop_before_any_work(tmp_path, capsys, override, expected):
    out = tmp_path / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), *override]) == 2
    assert expected in _error_line(capsys)
    assert not out.exists()  # nothing written, nothing trained


def test_a_config_file_with_invalid_utf8_or_a_folder_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"seed: 1\ntask:\n  n_train: \x8a\n")
    assert main(["config", "--config", str(path)]) == 2
    assert f"{path}: not valid UTF-8 (line 3, byte 11: b'\\x8a')" in _error_line(capsys)
    assert main(["config", "--config", str(tmp_path)]) == 2  # a folder: not a file, so read as a preset name
    assert "unknown preset" in _error_line(capsys)


def test_yaml_nan_in_a_config_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("initial:\n  learning_rate: .nan\n")
    assert main(["config", "--config", str(path)]) == 2
    assert str(path) in _error_line(capsys)


# --- files the tool reads -------------------------------------------------------------------------------------------

def _bad_utf8_jsonl(path):
    good = json.dumps({"question": "1+1=?", "trace": "1+1=2", "answer": "2"}).encode()
    path.write_bytes(good + b"\n" + good.replace(b"1+1", b"1\xff1") + b"\n")
    return path


def test_invalid_utf8_task_source_is_one_line(tmp_path, capsys):
    data = _bad_utf8_jsonl(tmp_path / "data.jsonl")
    assert main(["data", "--config", "smoke", "--output-dir", str(tmp_path / "run"), "--task.source", str(data)]) == 2
    line = _error_line(capsys)
    assert f"{data}, line 2: not valid UTF-8 (byte 15: b'\\xff')" in line


def test_invalid_utf8_benchmark_file_is_one_line(tmp_path, capsys, tiny_model_dir):
    data = _bad_utf8_jsonl(tmp_path / "bench.jsonl")
    assert main(["eval", "--model", str(tiny_model_dir), "--benchmark", str(data),
                 "--output-dir", str(tmp_path / "ev")]) == 2
    assert "not valid UTF-8" in _error_line(capsys)


@pytest.mark.parametrize("content, expected", [
    (b"[1, 2]\n", "line 1: must be a JSON object, got list"),
    (b'{"question": "a"\n', "line 1: invalid JSON"),
    (b"[" * 100_000 + b"\n", "line 1: invalid JSON"),
])
def test_malformed_jsonl_rows(tmp_path, content, expected):
    from varreason.tasks.user import read_records

    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        read_records(str(path))


# --- one writer per run folder ---------------------------------------------------------------------------------------

HOLD = """
import sys, time
from varreason.runs import RunDir
with RunDir(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        assert main(["run", "--config", "smoke", "--output-dir", str(out)]) == 2
        line = _error_line(capsys)
        assert f"in use by pid {proc.pid}" in line and str(out) in line
        assert not (out / "data").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_never_blocks(tmp_path):
    out = tmp_path / "run"
    proc = _holder(out)
    with pytest.raises(InputError, match="in use"), RunDir(out).lock():
        pass
    proc.kill()  # SIGKILL: no cleanup runs; the kernel drops the lock with the process
    proc.wait()
    with RunDir(out).lock():
        assert (out / ".lock").read_text().startswith(f"pid {os.getpid()}")


# --- the run folder itself: not a folder, or changed from outside ------------------------------------------------------

@pytest.mark.parametrize("where", ["afile", "afile/run"])
def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, capsys, where):
    (tmp_path / "afile").write_text("mine")
    assert main(["data", "--config", "smoke", "--output-dir", str(tmp_path / where)]) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    assert (tmp_path / "afile").read_text() == "mine"


def test_damaged_or_missing_artifacts_are_one_line_naming_the_file(tmp_path, capsys):
    out = tmp_path / "run"
    for stage in ("data", "base"):
        assert main([stage, "--config", "smoke", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    manifest = (out / "manifest.json").read_bytes()
    (out / "manifest.json").write_text('{"stages": ')  # edited by hand, half saved
    assert main(["data", "--config", "smoke", "--output-dir", str(out)]) == 2
    line = _error_line(capsys)
    assert f"{out / 'manifest.json'}: damaged, not readable (JSONDecodeError" in line and "remove it" in line
    (out / "manifest.json").write_bytes(manifest)

    train = (out / "data/train.parquet").read_bytes()
    (out / "data/train.parquet").write_bytes(train[:100])  # cut short from outside (artifacts are written whole)
    assert main(["initial", "--config", "smoke", "--output-dir", str(out)]) == 2
    assert f"{out / 'data/train.parquet'}: damaged, not readable (ArrowInvalid" in _error_line(capsys)
    (out / "data/train.parquet").unlink()
    assert main(["initial", "--config", "smoke", "--output-dir", str(out)]) == 2
    assert f"{out / 'data/train.parquet'}: not there: run the stage that writes it first" in _error_line(capsys)
    (out / "data/train.parquet").write_bytes(train)

    weights = out / "models/base/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["initial", "--config", "smoke", "--output-dir", str(out)]) == 2
    assert f"{out / 'models/base'}: cannot load model (Error while deserializing header" in _error_line(capsys)
    assert not (out / "models/initial").exists()


# --- failed writes leave nothing partial -----------------------------------------------------------------------------

def test_a_temporary_file_left_by_a_killed_writer_is_removed_on_the_next_write(tmp_path):
    run = RunDir(tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / "run" / "data" / f".x.parquet.tmp{dead.stdout.strip()}"  # its writer was killed mid-write
    live = tmp_path / "run" / "data" / f".x.parquet.tmp{os.getppid()}"  # a writer that still runs: left alone
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    live.write_bytes(b"busy")
    run.write_rows("data/x.parquet", [{"a": 1}])
    assert not stale.exists() and live.exists() and run.read_rows("data/x.parquet") == [{"a": 1}]


def test_full_disk_during_a_write_leaves_no_partial_file(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.write_rows("data/x.parquet", [{"a": 1}])

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError):
        run.write_rows("data/x.parquet", [{"a": 2}])
    with pytest.raises(OSError):
        run.write_json("manifest.json", {"stages": {}})
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file()) == ["x.parquet"]
    assert run.read_rows("data/x.parquet") == [{"a": 1}]  # the finished artifact is untouched


def test_full_disk_is_one_line_from_the_cli(tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq

    def no_space(table, where, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(pq, "write_table", no_space)
    out = tmp_path / "run"
    assert main(["data", "--config", "smoke", "--output-dir", str(out)]) == 2
    line = _error_line(capsys)
    assert f"cannot write: {out / 'data'}/" in line and "No space left on device" in line
    assert not list((out / "data").glob("*")) if (out / "data").exists() else True


def test_disk_failure_finds_the_full_disk_behind_a_library_error(tmp_path, monkeypatch):
    from varreason.errors import LOW_SPACE, disk_failure

    class SafetensorError(Exception):  # how safetensors reports ENOSPC: no OSError, only the text
        pass

    assert disk_failure(ValueError("a bug"), tmp_path) is None  # a roomy disk: a bug stays a bug
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")  # a failed close: no file name
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        found = disk_failure(outer, tmp_path / "models")
    assert (found.errno, found.filename) == (errno.ENOSPC, str(tmp_path / "models"))
    text = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_failure(text, tmp_path).errno == errno.ENOSPC
    assert disk_failure(OSError(errno.ENOENT, "gone"), tmp_path) is None

    class Full:  # what statvfs says of a disk with one block left, or of a read-only mount
        f_bavail, f_frsize, f_flag = 1, 4096, 0

    class ReadOnly(Full):
        f_bavail, f_flag = 10**9, os.ST_RDONLY

    assert Full.f_bavail * Full.f_frsize < LOW_SPACE
    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    assert disk_failure(RuntimeError("unexpected pos 136128 vs 136020"), tmp_path / "new").errno == errno.ENOSPC
    assert disk_failure(TypeError("a bug"), tmp_path) is None  # a bug stays a bug, even on a full disk
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly)
    assert disk_failure(SafetensorError("Error while serializing"), tmp_path).errno == errno.EROFS
    assert disk_failure(KeyError("a bug"), tmp_path) is None
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise ValueError("handled, then another error") from None  # the disk error is not its cause
    except ValueError as suppressed:
        assert disk_failure(suppressed, None) is None


# --- determinism ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_same_seed_same_pi0_bit_for_bit(tmp_path):
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        for stage in ("data", "base", "initial"):
            assert main([stage, "--config", "smoke", "--output-dir", str(out)]) == 0
        digests.append((out / "models/initial/model.safetensors").read_bytes())
    assert digests[0] == digests[1]


def test_resume_skips_a_checkpoint_whose_save_was_killed(tmp_path):
    from varreason.training import last_complete_checkpoint

    work = tmp_path / "final.work"
    assert last_complete_checkpoint(work) is None
    for step, complete in ((3, True), (6, False), (9, None)):
        (work / f"checkpoint-{step}").mkdir(parents=True)
        (work / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
        if complete is not None:
            (work / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_step": 3}' if complete else '{"glo')
    assert last_complete_checkpoint(work) == str(work / "checkpoint-3")
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-3"]  # the half-written ones are gone
