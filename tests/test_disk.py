"""Real filesystems, not monkeypatches: a run on a disk that fills up, a read-only folder, and a trace of every path a
run writes. The disks are tmpfs mounts of a set size inside a private mount namespace (`unshare -rm`: no root needed
where user namespaces are allowed, nothing visible outside); the trace is strace's."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from varreason.cli import main

VARREASON = [sys.executable, "-m", "varreason"]
TABLES = ("data/train.parquet", "data/test.parquet", "samples/posterior.parquet", "scores/scores.parquet",
          "scores/rollouts.parquet", "weights.parquet", "train/final.parquet", "eval/final/samples.parquet")


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           check=False, capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="no private mount namespace (unshare -rm) here")


def _in_namespace(script: str, **env) -> None:
    """Run a shell script in a private mount namespace; it mounts what it needs and copies out what is checked."""
    subprocess.run(["unshare", "-rm", "sh", "-euc", script], check=True, env={**os.environ, **env}, timeout=600)


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("varreason: error:")]


def _nothing_partial(folder: Path) -> None:
    """Every file is whole: no temporary file or model folder, every table reads, every checkpoint was finished."""
    assert [p for p in folder.rglob("*") if ".tmp" in p.name] == []
    for table in folder.rglob("*.parquet"):
        pq.read_table(table)
    for checkpoint in folder.rglob("checkpoint-*"):
        json.loads((checkpoint / "trainer_state.json").read_text())
    json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def smoke_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out)]) == 0
    return out


# The smoke run folder holds ~1.1 MB at the end (more while checkpoints exist): each size runs out at another point.
DISK_SIZES = ("200k", "800k", "1000k")


@needs_mounts
@pytest.mark.slow
def test_a_disk_that_fills_up_is_one_line_leaves_nothing_partial_and_resumes(tmp_path, smoke_reference):
    failed_at, lines = {}, []
    for size in DISK_SIZES:
        keep = tmp_path / size
        keep.mkdir()
        _in_namespace("""
            mnt=$(mktemp -d); mount -t tmpfs -o size=$SIZE tmpfs $mnt
            set +e; $CLI run --config smoke --output-dir $mnt/run >/dev/null 2>"$KEEP/err"; echo $? >"$KEEP/rc"
            set -e; cp -a $mnt/run "$KEEP/failed"
            mount -o remount,size=64m $mnt   # space freed: the same command again
            $CLI run --config smoke --output-dir $mnt/run >/dev/null 2>/dev/null
            cp -a $mnt/run "$KEEP/resumed"
        """, SIZE=size, KEEP=str(keep), CLI=" ".join(VARREASON))
        err = (keep / "err").read_text()
        assert (keep / "rc").read_text().strip() == "2", err
        [line] = _error_lines(err)
        assert "cannot write: " in line and "No space left on device" in line and "rerun to resume" in line
        lines.append(line)
        failed = keep / "failed"
        _nothing_partial(failed)
        failed_at[size] = list(json.loads((failed / "manifest.json").read_text())["stages"])[-1:]
        resumed = keep / "resumed"
        for rel in TABLES:
            assert pq.read_table(resumed / rel).equals(pq.read_table(smoke_reference / rel)), (size, rel)
        assert (json.loads((resumed / "eval/summary.json").read_text())
                == json.loads((smoke_reference / "eval/summary.json").read_text())), size
        assert [p for p in resumed.rglob("*") if ".tmp" in p.name or p.name.endswith(".work")] == []
    print("last stage done when the disk filled:", failed_at)
    assert len({tuple(v) for v in failed_at.values()}) >= 2, failed_at  # the disk filled at different points
    assert any(".work" in line for line in lines), lines  # at least one cut a training checkpoint short


@needs_mounts
def test_a_read_only_folder_is_one_line_and_stays_untouched(tmp_path):
    run = tmp_path / "run"
    assert main(["data", "--config", "smoke", "--output-dir", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _in_namespace("""
        mount --bind "$RUN" "$RUN"; mount -o remount,bind,ro "$RUN"
        set +e; $CLI run --config smoke --output-dir "$RUN" >/dev/null 2>"$KEEP/err-existing"
        echo $? >"$KEEP/rc-existing"
        ro=$(mktemp -d); mount -t tmpfs -o size=64k,ro tmpfs $ro
        $CLI run --config smoke --output-dir $ro/new >/dev/null 2>"$KEEP/err-new"; echo $? >"$KEEP/rc-new"
        ls -A $ro >"$KEEP/listing-new"
    """, RUN=str(run), KEEP=str(tmp_path), CLI=" ".join(VARREASON))
    for case in ("existing", "new"):
        err = (tmp_path / f"err-{case}").read_text()
        assert (tmp_path / f"rc-{case}").read_text().strip() == "2", err
        [line] = _error_lines(err)
        assert "Read-only file system" in line, line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert (tmp_path / "listing-new").read_text() == ""


# --- what a run writes outside its folder ---------------------------------------------------------------------------

WRITES = "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,unlink,unlinkat,rmdir,truncate"
WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)")
PATH = re.compile(r'(?:(AT_FDCWD|\d+<([^>]*)>),\s*)?"((?:[^"\\]|\\.)*)"')


def written_paths(trace_dir: Path, cwd: Path) -> set[Path]:
    """Every path a traced process created, opened for writing, renamed, linked or removed, resolved to an absolute
    path (`strace -ff -y`: one file per process, descriptors shown with their paths)."""
    paths = set()
    for trace in trace_dir.iterdir():
        for line in trace.read_text(errors="replace").splitlines():
            call = CALL.match(line)
            if not call or int(call.group(3)) < 0:
                continue
            name, args = call.group(1), call.group(2)
            if name in ("open", "openat", "creat") and name != "creat" and not WRITE_FLAGS.search(args):
                continue
            for _, dir_path, path in PATH.findall(args):
                base = Path(dir_path) if dir_path else cwd
                paths.add(Path(os.path.normpath(base / path)))
    return paths


def _traced(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, set[Path], Path]:
    home, tmp, cwd, traces = (tmp_path / name for name in ("home", "tmp", "cwd", "trace"))
    for folder in (home, tmp, cwd, traces):
        folder.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache"),
           "XDG_CONFIG_HOME": str(home / ".config")}
    env.pop("MPLCONFIGDIR", None)
    proc = subprocess.run(["strace", "-f", "-ff", "-qq", "-y", "-e", f"trace={WRITES}", "-o", str(traces / "t"),
                           *VARREASON, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    return proc, written_paths(traces, cwd), home


def _outside(paths: set[Path], run: Path) -> set[Path]:
    """Paths outside the run folder, less the null device and Python's own bytecode cache."""
    return {p for p in paths if not p.is_relative_to(run) and p != Path("/dev/null") and "__pycache__" not in p.parts}


def _import_side_effects(outside: set[Path], tmp: Path) -> set[Path]:
    """Written outside the run folder by imports, not by us: the standard library's probe of TMPDIR
    (`tempfile.gettempdir()`, a four-byte file removed at once) and torch's inductor cache folder, which
    `import torch._dynamo` (pulled in by transformers' Trainer) creates in TMPDIR, empty."""
    return {p for p in outside if p.parent == tmp and (
        not p.exists() or (p.name.startswith("torchinductor_") and not any(p.iterdir())))}


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


@needs_strace
def test_bad_input_writes_nothing_outside_the_run_folder(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"question": "1+1=?", "trace": "1+1=2", "answer": "2"}\n{"question": "1\xff1"}\n')
    run = tmp_path / "run"
    proc, paths, home = _traced(["run", "--config", "smoke", "--output-dir", str(run), "--task.source", str(data)],
                                tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(_error_lines(proc.stderr)) == 1
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the lock alone: the data is checked before config.yaml
    outside = _outside(paths, run)
    assert outside - _import_side_effects(outside, tmp_path / "tmp") == set(), sorted(outside)
    assert list(home.rglob("*")) == []


@needs_strace
@pytest.mark.slow
def test_a_run_writes_only_in_its_folder_and_the_plot_font_cache(tmp_path):
    run = tmp_path / "run"
    proc, paths, home = _traced(["run", "--config", "smoke", "--output-dir", str(run)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outside = _outside(paths, run)
    imports = _import_side_effects(outside, tmp_path / "tmp")
    # matplotlib's per-user font cache and config folder (made once; every matplotlib program writes them)
    fonts = {p for p in outside if p.is_relative_to(home / ".cache/matplotlib") or p == home / ".cache"
             or p.is_relative_to(home / ".config/matplotlib") or p == home / ".config"}
    semaphores = {p for p in outside if p.parent == Path("/dev/shm") and not p.exists()}  # multiprocessing's, gone
    assert outside - imports - fonts - semaphores == set(), sorted(outside - imports - fonts - semaphores)
    print(f"{len(paths)} paths written; outside the run folder: {len(imports)} by imports, {len(fonts)} font cache, "
          f"{len(semaphores)} semaphores")
