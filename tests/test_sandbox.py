"""The code sandbox: verdicts, limits, the guard and the kernel layer under it. Small limits keep it fast."""

import importlib.util
import os
import subprocess
import tempfile
import time

import pytest

from varreason.eval import sandbox
from varreason.eval.sandbox import CaseResult, extract_code, outputs_match, run_tests, sandbox_protections

ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
ADD_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4", "output": "6"}]
ONE = [{"input": "", "output": "ok"}]
SLACK_S = 2.0  # scheduling slack on a loaded CI machine


@pytest.fixture(scope="module")
def protections():
    return sandbox_protections()


def _fenced(code: str, tag: str = "python") -> str:
    return f"Here is my solution.\n\n```{tag}\n{code}```\n\nIt reads the input and prints the sum."


@pytest.fixture
def spawned(monkeypatch):
    """Pids of the sandbox processes started during the test (each is its own session leader)."""
    pids = []
    real_popen = subprocess.Popen

    class Recording(real_popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pids.append(self.pid)

    monkeypatch.setattr(sandbox.subprocess, "Popen", Recording)
    # children this process already had (e.g. the math-verify worker another test started) are not ours
    _PREEXISTING.clear()
    _PREEXISTING.update(_live_processes(set()))
    return pids


_PREEXISTING: set[int] = set()


def _live_processes(sessions) -> list[int]:
    """Non-zombie processes in the given sessions, or children of this process started since the fixture ran."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid, session = fields[0], int(fields[1]), int(fields[3])
        if state not in "ZX" and (session in sessions or ppid == os.getpid()) and int(entry) not in _PREEXISTING:
            found.append(int(entry))
    return found


# ------------------------------------------------------------------------------------------------ extraction


def test_extract_code_takes_the_last_python_or_untagged_block():
    text = (
        "First try:\n```python\nprint(1)\n```\nSample output:\n```text\n1\n```\n"
        "Better:\n```\nprint(2)\n```\nFinal:\n```Python3\nprint(3)\n```\nExpected:\n```\n3\n```\n```cpp\nint main(){}\n```\n"
    )
    assert extract_code(text) == "3\n"  # the last untagged block wins; text / cpp blocks are skipped
    assert extract_code(text.rsplit("Expected", 1)[0]) == "print(3)\n"
    assert extract_code("Steps:\n  1. code:\n     ```py\n     x = 1\n     print(x)\n     ```\n") == "x = 1\nprint(x)\n"
    assert extract_code("```python\r\nprint(4)\r\n```\r\n") == "print(4)\n"
    assert extract_code("~~~\nprint(5)\n~~~") == "print(5)\n"
    assert extract_code("````python\nprint('```')\n```\n````") == "print('```')\n```\n"
    assert extract_code("```python\n```") == ""


def test_extract_code_inline_fences_and_pathological_text():
    assert (
        extract_code("x</think><answer>```python\nprint(2 * int(input()))\n```</answer>") == "print(2 * int(input()))\n"
    )
    start = time.monotonic()
    assert extract_code("```a\n" * 50_000) is None and extract_code("```\n" * 50_001) == ""
    assert time.monotonic() - start < 2.0  # one linear pass, no regex backtracking


def test_extract_code_none_and_truncated():
    assert extract_code("no code here") is None
    assert extract_code("only `inline` code") is None
    assert extract_code("```cpp\nint main() {}\n```") is None
    assert extract_code(None) is None and extract_code(123) is None
    assert extract_code("cut off:\n```python\nprint(6)\n") == "print(6)\n"  # a lone opening fence (truncated)


def test_outputs_match():
    assert outputs_match("3  \n4\t\n\n\n", "3\n4")  # trailing whitespace and blank lines
    assert outputs_match("1   2\n", "1 2")  # whitespace runs inside a line
    assert not outputs_match("3\n4\n5", "3\n4")
    assert outputs_match("0.3333333", "0.333333333333")  # |a - b| <= 1e-6 * max(1, |b|)
    assert outputs_match("2.0", "2") and outputs_match("1e9", "1000000000.0005")
    assert not outputs_match("0.34", "0.333333")
    assert not outputs_match("1000000000000000001", "1000000000000000000")  # integers are exact
    assert outputs_match("nan", "nan ") and not outputs_match("nan", "0.5")
    assert not outputs_match("abc", "abd") and not outputs_match("1.0", "one")


# ------------------------------------------------------------------------------------------------- verdicts


def test_correct_code_passes_reading_stdin():
    result = run_tests(_fenced(ADD), ADD_TESTS, time_limit_s=2)
    assert result.passed and result.reason == "passed" and bool(result)
    assert len(result.details) == 2 and all(isinstance(d, CaseResult) and d.passed for d in result.details)
    assert all(0 < d.elapsed < 2 + SLACK_S for d in result.details)
    assert run_tests(ADD, ADD_TESTS, time_limit_s=2).passed  # raw code
    lines = "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))"  # large stdin
    numbers = " ".join(str(i) for i in range(300_000))
    assert run_tests(lines, [{"input": numbers, "output": str(sum(range(300_000)))}], time_limit_s=2).passed


def test_wrong_answer_names_the_test_and_stops():
    result = run_tests("a, b = map(int, input().split())\nprint(a + b if a == 1 else 0)", ADD_TESTS + ADD_TESTS)
    assert not result.passed and result.reason == "wrong answer (test 1)"
    assert [d.reason for d in result.details] == ["passed", "wrong answer (test 1)", "not run", "not run"]
    every = run_tests("print(3)", ADD_TESTS + ADD_TESTS, stop_on_failure=False)
    assert [d.passed for d in every.details] == [True, False, True, False] and every.reason == "wrong answer (test 1)"


def test_float_tolerance_end_to_end():
    assert run_tests("print(1 / 3)", [{"input": "", "output": "0.333333"}]).passed
    assert not run_tests("print(0.34)", [{"input": "", "output": "0.333333"}]).passed


def test_runtime_and_syntax_errors():
    result = run_tests("x = 1\nraise ValueError('boom')", ONE)
    assert result.reason == "runtime error (test 0): ValueError: boom"
    result = run_tests(_fenced("print(1\n"), ONE)
    assert result.reason.startswith("runtime error (test 0): SyntaxError")
    assert run_tests("import sys; sys.exit(3)", ONE).reason == "runtime error (test 0): exit status 3"


def test_no_code_block():
    for text in ["I am not sure how to solve this.", "```cpp\nint main() { return 0; }\n```"]:
        result = run_tests(text, ONE)
        assert not result.passed and result.reason == "no code block"
        assert [d.reason for d in result.details] == ["not run"]
    assert run_tests("print('ok')", ONE, extract=True).reason == "no code block"
    assert run_tests("print('ok')", ONE).passed  # auto mode: fence-less text that parses is code
    assert run_tests("s = '```'\nprint('ok')", ONE).passed  # a fence inside raw code is not a block


def test_infinite_loop_hits_the_time_limit():
    start = time.monotonic()
    result = run_tests("while True:\n    pass", ONE, time_limit_s=1)
    took = time.monotonic() - start
    assert result.reason == "time limit (test 0)"
    assert took < 1 + SLACK_S and result.details[0].elapsed < 1 + SLACK_S


def test_sleeping_code_hits_the_wall_clock():
    result = run_tests("import time\ntime.sleep(60)", ONE, time_limit_s=0.25)
    assert result.reason == "time limit (test 0)"
    assert 1.4 < result.details[0].elapsed < 1.5 + SLACK_S  # 2 x time limit + 1 s


def test_memory_hungry_code_hits_the_memory_limit():
    start = time.monotonic()
    result = run_tests("x = bytearray(2 * 1024 ** 3)\nprint('ok')", ONE, time_limit_s=2, memory_mb=256)
    assert result.reason == "memory limit (test 0)" and time.monotonic() - start < 2 + SLACK_S
    growing = run_tests(
        "chunks = []\nwhile True:\n    chunks.append(b'x' * 10 ** 6)", ONE, time_limit_s=2, memory_mb=256
    )
    assert growing.reason == "memory limit (test 0)"


def test_huge_output_is_a_wrong_answer_not_a_hang():
    for code in ["print('x' * 10 ** 8)", "while True:\n    print('y' * 1000)"]:
        start = time.monotonic()
        result = run_tests(code, ONE, time_limit_s=2)
        assert result.reason.startswith("wrong answer (test 0)") and "output exceeds" in result.reason
        assert time.monotonic() - start < 2 + SLACK_S


def test_threads_and_common_imports_work():
    code = (
        "import threading, collections, heapq, bisect, itertools, functools, math, fractions, decimal, re, ctypes\n"
        "out = []\nt = threading.Thread(target=lambda: out.append(sum(map(int, input().split()))))\n"
        "t.start(); t.join(); print(out[0])\nopen('scratch.txt', 'w').write('fine')\n"
    )
    assert run_tests(code, [{"input": "2 3", "output": "5"}]).passed
    if importlib.util.find_spec("numpy") is not None:
        assert run_tests("import numpy as np\nprint(int(np.arange(5).sum()))", [{"input": "", "output": "10"}]).passed


# ----------------------------------------------------------------------------------------------- the guard


def test_fork_bomb_is_blocked_and_leaves_nothing_behind(spawned):
    start = time.monotonic()
    result = run_tests("import os\nwhile True:\n    os.fork()", ONE, time_limit_s=1)
    assert result.reason.startswith("blocked: fork/network (test 0)")
    assert time.monotonic() - start < 1 + SLACK_S
    assert spawned and not _live_processes(set(spawned))


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.system('echo hi')",
        "import subprocess\nsubprocess.run(['echo', 'hi'])",
        "import multiprocessing as mp\np = mp.Process(target=print)\np.start(); p.join()",
        "import os\nos.kill(1, 0)",
        "import ctypes\nctypes.CDLL(None).fork()",
        "import os\ntry:\n    os.fork()\nexcept BaseException:\n    pass\nprint('ok')",  # catching does not help
    ],
)
def test_process_creation_is_blocked(code, spawned):
    result = run_tests(code, ONE, time_limit_s=1)
    assert result.reason.startswith("blocked: fork/network (test 0)"), result.reason
    assert not _live_processes(set(spawned))


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)",
        "import urllib.request\nurllib.request.urlopen('http://1.1.1.1', timeout=3)",
        "import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))",
    ],
)
def test_network_is_blocked(code):
    start = time.monotonic()
    result = run_tests(code, ONE, time_limit_s=1)
    assert result.reason.startswith("blocked: fork/network (test 0)"), result.reason
    assert time.monotonic() - start < 1 + SLACK_S


def test_writes_stay_in_the_temporary_directory(tmp_path, monkeypatch):
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", recording_mkdtemp)
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "escaped.txt"
    code = (
        "import os\nopen('local.txt', 'w').write('x')\nos.mkdir('sub')\n"
        f"try:\n    open({str(outside)!r}, 'w').write('x')\nexcept OSError:\n    print('denied')\n"
        f"try:\n    os.symlink({str(tmp_path)!r}, 'link')\nexcept OSError:\n    print('denied')\n"
    )
    result = run_tests(code, [{"input": "", "output": "denied\ndenied"}])
    assert result.passed, result.reason
    assert not outside.exists() and not (tmp_path / "local.txt").exists()
    assert made and not any(os.path.exists(d) for d in made)  # the temporary directory is removed


def test_bad_inputs_never_raise():
    assert run_tests(None, ONE).reason.startswith("sandbox error")
    assert run_tests("print(1)", []).reason == "sandbox error: no tests"
    assert run_tests("print(1)", [{"input": "x"}]).reason.startswith("sandbox error: test 0")
    assert run_tests("print(1)", "not a list").reason.startswith("sandbox error")
    assert run_tests("print(1)", ONE, time_limit_s=-1).reason.startswith("sandbox error")
    assert run_tests("print(1)", ONE, memory_mb="lots").reason.startswith("sandbox error")
    result = run_tests("print(1)", ONE, python="/nonexistent/python")
    assert not result.passed and result.reason.startswith("sandbox error")


# ------------------------------------------------------------------------------------------ the kernel layer


def test_protections_are_reported(protections):
    assert "error" not in protections, protections
    assert protections["python_guard"] is True
    assert protections["no_new_privs"] and protections["pdeathsig"]
    if os.geteuid() == 0:
        assert protections["user"] in ("root", "nobody") and protections["caps_dropped"]


def test_kernel_layer_blocks_fork_and_network_without_the_guard(protections, monkeypatch, spawned):
    if not protections.get("seccomp"):
        pytest.skip("no seccomp filter here (not x86-64 Linux)")
    monkeypatch.setattr(sandbox, "_PYTHON_GUARD", False)
    for code in ["import os\nwhile True:\n    os.fork()", "import socket\nsocket.socket()"]:
        result = run_tests(code, ONE, time_limit_s=1)
        assert result.reason == "blocked: fork/network (test 0): forbidden system call (seccomp)"
    assert not _live_processes(set(spawned))


def test_network_namespace_without_guard_or_seccomp(protections, monkeypatch):
    if not protections.get("netns"):
        pytest.skip("no network namespace (not root)")
    monkeypatch.setattr(sandbox, "_PYTHON_GUARD", False)
    monkeypatch.setattr(sandbox, "_SECCOMP", False)
    code = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)"
    start = time.monotonic()
    result = run_tests(code, ONE, time_limit_s=1)
    assert result.reason.startswith("runtime error (test 0)") and "unreachable" in result.reason
    assert time.monotonic() - start < 1 + SLACK_S


def test_read_only_filesystem_without_the_guard(protections, monkeypatch, tmp_path):
    if not protections.get("readonly_fs"):
        pytest.skip("no read-only mount namespace (not root)")
    monkeypatch.setattr(sandbox, "_PYTHON_GUARD", False)
    outside = tmp_path / "escaped.txt"
    code = f"open('local.txt', 'w').write('x')\ntry:\n    open({str(outside)!r}, 'w')\nexcept OSError as e:\n    print(e.errno)"
    assert run_tests(code, [{"input": "", "output": "30"}]).passed  # EROFS
    assert not outside.exists()
