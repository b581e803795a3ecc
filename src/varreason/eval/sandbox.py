"""Run untrusted code answers against stdin/stdout tests. Never in-process; nothing here raises.

`run_tests(code, tests, time_limit_s, memory_mb)` checks a code answer the LiveCodeBench / APPS way: each test is
`{"input": str, "output": str}`, the program reads `input` on stdin and must print `output`. `code` is raw code or
a model output, from which `extract_code` takes the last Python (or untagged) fenced block. The result is a
`SandboxResult(passed, reason, details)`; `details` has one `CaseResult(passed, reason, elapsed, cpu)` per test.

Reasons: "passed" | "wrong answer (test i)" | "runtime error (test i): <last stderr line>" | "time limit (test i)"
| "memory limit (test i)" | "blocked: fork/network (test i): <what>" | "no code block" | "sandbox error: <why>".
Tests are 0-indexed; the first failing test decides the result and later tests are not run ("not run" in
`details`; `stop_on_failure=False` runs them all). An empty test list is a sandbox error, never a pass.

How a test runs
---------------
Every test gets a fresh temporary directory (the process's cwd, HOME and TMPDIR; removed afterwards) and a fresh
`python -I` process (isolated mode: no PYTHON* variables, no user site, cwd not on sys.path) with a minimal
environment, in its own session / process group. The process starts a small bootstrap (`_BOOTSTRAP`, passed with
`-c`) that hardens itself, then compiles and runs the user code as `__main__` (file name `solution.py`). The setup
is done in the bootstrap rather than in `preexec_fn` because `preexec_fn` is not safe in a threaded parent and runs
after `Popen`'s own `user=` switch, too late for namespaces. In order, the bootstrap:

1. if root: `unshare(CLONE_NEWNET | CLONE_NEWNS)`: a network namespace with no interfaces but a downed loopback (no
   network at all), and a private mount namespace in which every mount is made read-only except the test's
   temporary directory (`mount_setattr`, Linux >= 5.12). Each part falls back silently when the kernel refuses.
2. sets rlimits: RLIMIT_CPU = ceil(time_limit_s) (SIGXCPU, hard limit one second later), RLIMIT_AS = memory_mb,
   RLIMIT_FSIZE = `FILE_SIZE_LIMIT_MB`, RLIMIT_NOFILE = `OPEN_FILES_LIMIT`, RLIMIT_CORE = 0.
3. if root: switches to the `nobody` user (then RLIMIT_NPROC = `NPROC_LIMIT` is enforced too) when the interpreter
   and every sys.path entry are world-readable; otherwise it stays uid 0 but drops every capability (so it cannot
   undo the read-only mounts or signal / trace other users' processes).
4. `PR_SET_NO_NEW_PRIVS`, `PR_SET_PDEATHSIG(SIGKILL)` (dies with its parent), and on x86-64 a seccomp filter that
   kills the process (SIGSYS) on fork / vfork / non-thread clone, execve, socket(), kill / tgkill of another
   process, ptrace, mount / unshare / setns, io_uring, module loading and a few more; clone3 fails with ENOSYS so
   glibc starts threads through clone. This is the kernel-level fork-bomb and network barrier, root or not.
5. installs the Python guard: an audit hook (PEP 578; audit hooks cannot be removed) that ends the process with
   exit status `BLOCKED_EXIT` on os.fork / forkpty / system / exec* / spawn* / posix_spawn, subprocess.Popen,
   os.kill / killpg, any socket creation, connect, bind or DNS lookup, urllib / http.client / ftplib / smtplib
   connections, and ctypes use beyond `import ctypes` (numpy imports it): loading a library, looking up a symbol,
   calling a foreign function, reading raw memory; `_posixsubprocess.fork_exec` (used by multiprocessing without
   an audit event) is replaced; writes, renames, deletions and mode changes outside the temporary directory (and
   /dev/null, /dev/stdout, /dev/stderr) raise PermissionError; symlinks, hard links and gc.get_objects /
   get_referrers / get_referents (a way to reach the hook) raise PermissionError too. This is what
   human-eval's `reliability_guard` does by overwriting module attributes, but attribute patches are undone by
   `import posix` or `importlib.reload(os)`; audit events are raised inside the C functions themselves.

The parent feeds stdin, reads stdout (capped at `max(OUTPUT_LIMIT_BYTES, 2 x expected)`: more is a wrong answer
and the process is killed at once) and the tail of stderr, and kills the whole process group with SIGKILL when the
wall clock passes `2 x time_limit_s + 1` s, when the output cap is passed, and in any case once the leader has
exited (before it is reaped, so the group id cannot have been reused): nothing is left behind.

Verdicts: exit status `BLOCKED_EXIT` or SIGSYS: blocked; SIGXCPU, a SIGKILL at the CPU hard limit, the wall limit
or more CPU time than `time_limit_s`: time limit; a MemoryError (or "Cannot allocate memory") in the last stderr
line, or a SIGKILL that is not ours (the OOM killer): memory limit; other non-zero exit or signal: runtime error;
exit 0: stdout is compared with `outputs_match`.

Output comparison (`outputs_match`): both sides are stripped, split into lines, and each line stripped (leading and
trailing whitespace and trailing blank lines never matter). Lines that still differ are split into whitespace
tokens; two tokens match if they are equal or if both are numbers, at least one is not an integer, and
|a - b| <= float_tol * max(1, |b|) (float_tol = 1e-6: absolute or relative error 1e-6, the usual judge rule).
Integers are compared exactly.

Limits (what this is not)
-------------------------
The real boundary is the kernel: rlimits, the process group, seccomp, and (as root) the namespaces and dropped
privileges. The Python guard is a second layer that gives clear verdicts; Python cannot isolate Python, and code
that reaches the interpreter's internals can get past it (a `dir_fd`-relative open from a directory fd, for
instance, is not seen by the path check). Without root there is no network or mount namespace: network access is
then stopped by seccomp (x86-64 only) and the guard, and files writable by the calling user are protected only by
the guard. Off x86-64 there is no seccomp filter, so a fork bomb is stopped only by the guard (and by RLIMIT_NPROC
when running as root with a world-readable interpreter). Memory is limited by address space (RLIMIT_AS), which
also counts reserved but untouched memory. CPU time is limited with a one-second granularity by the kernel and
checked exactly afterwards. As root with an interpreter that `nobody` cannot read (one under /root, say), the code
runs as uid 0 without capabilities: it can read root-owned files, but write only to its directory (read-only
mounts). Any socket use is refused, asyncio's event loop (a socketpair) included. Each test costs about 0.05 s of
process start-up. `sandbox_protections()` reports which protections a run actually gets on this machine.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field

__all__ = [
    "CaseResult",
    "SandboxResult",
    "extract_code",
    "outputs_match",
    "run_tests",
    "sandbox_protections",
]

OUTPUT_LIMIT_BYTES = 1 << 20  # stdout beyond max(this, 2 x expected output) is a wrong answer
STDERR_TAIL_BYTES = 64 << 10  # only the end of stderr is kept (for the last line)
FILE_SIZE_LIMIT_MB = 16  # RLIMIT_FSIZE: the largest file the code may write
OPEN_FILES_LIMIT = 256  # RLIMIT_NOFILE
NPROC_LIMIT = 256  # RLIMIT_NPROC, set only when the code runs as `nobody` (not enforced for root)
NOBODY_UID = NOBODY_GID = 65534
BLOCKED_EXIT = 113  # the Python guard fired (fork / exec / network / ctypes)
NO_CODE_EXIT = 114  # auto mode: text without a code fence that does not parse as Python
SETUP_ERROR_EXIT = 115  # the bootstrap itself failed
FLOAT_TOL = 1e-6
_PYTHON_GUARD = True  # tests switch these off to check the other layers on their own
_SECCOMP = True

_PY_TAGS = frozenset({"", "python", "py", "python3", "py3", "python2"})
_FENCE = re.compile(r"`{3,}|~{3,}")
_INFO = re.compile(r"[ \t]*([\w+#.-]*)[^\n`]*\n")  # after an opening fence: language tag, rest of the line
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


# --------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CaseResult:
    """One test: `reason` as in `SandboxResult`; `elapsed` wall seconds; `cpu` CPU seconds of the process."""

    passed: bool
    reason: str
    elapsed: float = 0.0
    cpu: float = 0.0


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str
    details: list[CaseResult] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed


# --------------------------------------------------------------------------------------------- extraction


def extract_code(text: object) -> str | None:
    """The last fenced code block tagged python / py / python3 or untagged (```python ...``` or ``` ... ```).

    Blocks with another tag (```text, ```cpp, ...) are skipped. An opening fence may follow other text on its line
    ("<answer>```python"); a closing fence starts a line (after optional indentation) and may be followed by
    non-word text ("```</answer>"). Fences may be indented (the body is dedented) and may use ~~~; CRLF line ends are
    accepted. Without any complete block, an unterminated block opened at the start of a line (a truncated output)
    is used. None when there is no such block. One linear pass over the text.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str):
            return None
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        blocks: list[tuple[str, str]] = []
        opened = None  # (fence, tag, body start, opened at the start of a line)
        for m in _FENCE.finditer(text):
            line_start = text.rfind("\n", 0, m.start()) + 1
            at_line_start = not text[line_start : m.start()].strip()
            if opened is None:
                info = _INFO.match(text, m.end())
                if info:
                    opened = (m.group(), info.group(1).lower(), info.end(), at_line_start)
            elif m.group() == opened[0] and at_line_start and not re.match(r"[`~\w]", text[m.end() : m.end() + 1]):
                blocks.append((opened[1], text[opened[2] : line_start]))
                opened = None
        python = [body for tag, body in blocks if tag in _PY_TAGS]
        if python:
            return textwrap.dedent(python[-1])
        if not blocks and opened is not None and opened[3] and opened[1] in _PY_TAGS:
            return textwrap.dedent(text[opened[2] :])  # truncated output: everything after the opening fence
        return None
    except Exception:  # noqa: BLE001 - never raises
        return None


# --------------------------------------------------------------------------------------------- comparison


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()]


def _tokens_match(a: str, b: str, float_tol: float) -> bool:
    if a == b:
        return True
    if not (_NUMBER.fullmatch(a) and _NUMBER.fullmatch(b)):
        return False
    if _INTEGER.fullmatch(a) and _INTEGER.fullmatch(b):
        return int(a) == int(b)
    try:
        x, y = float(a), float(b)
    except (ValueError, OverflowError):
        return False
    if not (math.isfinite(x) and math.isfinite(y)):
        return x == y
    return abs(x - y) <= float_tol * max(1.0, abs(y))


def outputs_match(actual: str, expected: str, float_tol: float = FLOAT_TOL) -> bool:
    """Stripped lines equal; else per line, whitespace tokens equal or numerically close (see module docstring)."""
    got, want = _lines(actual), _lines(expected)
    if got == want:
        return True
    if len(got) != len(want):
        return False
    for line_got, line_want in zip(got, want):
        if line_got == line_want:
            continue
        toks_got, toks_want = line_got.split(), line_want.split()
        if len(toks_got) != len(toks_want):
            return False
        if not all(_tokens_match(a, b, float_tol) for a, b in zip(toks_got, toks_want)):
            return False
    return True


# ---------------------------------------------------------------------------------------------- bootstrap

# Runs as `python -I -c _BOOTSTRAP <json config>` in the test's temporary directory. Everything before the guard is
# trusted code; the user code runs last, in a fresh `__main__` module.
_BOOTSTRAP = r"""
import sys, os, json
def _setup():
    cfg = json.loads(sys.argv[1])
    sandbox = os.path.realpath(os.getcwd())
    status = {"euid": os.geteuid(), "netns": False, "readonly_fs": False, "user": "root" if os.geteuid() == 0 else "self",
              "caps_dropped": False, "no_new_privs": False, "pdeathsig": False, "seccomp": False,
              "python_guard": False, "nproc": None}
    with open(cfg["code_path"], "rb") as f:
        source = f.read()
    import resource, stat, _posixsubprocess  # everything the setup imports, before the memory limit
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:
        ctypes = libc = None
    c_ulong = ctypes.c_ulong if ctypes else None
    root = os.geteuid() == 0

    # 1. namespaces (root only)
    if root and libc is not None and cfg["namespaces"]:
        CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
        if libc.unshare(CLONE_NEWNET | CLONE_NEWNS) == 0:
            status["netns"] = True
            MS_REC, MS_PRIVATE, MS_BIND = 0x4000, 0x40000, 0x1000
            if libc.mount(None, b"/", None, c_ulong(MS_REC | MS_PRIVATE), None) == 0 and \
                    libc.mount(sandbox.encode(), sandbox.encode(), None, c_ulong(MS_BIND), None) == 0:
                class MountAttr(ctypes.Structure):
                    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]
                def setattr_(path, flags, set_, clr):
                    attr = MountAttr(set_, clr, 0, 0)
                    return libc.syscall(ctypes.c_long(442), ctypes.c_int(-100), ctypes.c_char_p(path),
                                        ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(32))
                if setattr_(b"/", 0x8000, 1, 0) == 0:  # AT_RECURSIVE, MOUNT_ATTR_RDONLY
                    if setattr_(sandbox.encode(), 0, 0, 1) == 0:
                        status["readonly_fs"] = True
                        os.chdir(sandbox)  # the old cwd is on the read-only mount under the bind mount
                    else:
                        setattr_(b"/", 0x8000, 0, 1)  # could not reopen the sandbox: undo
        elif libc.unshare(CLONE_NEWNET) == 0:
            status["netns"] = True

    # 2. rlimits
    def limit(which, soft, hard=None):
        hard = soft if hard is None else hard
        cur_soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(which, (soft, hard))
    limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, cfg["fsize_bytes"])
    limit(resource.RLIMIT_NOFILE, cfg["nofile"])
    limit(resource.RLIMIT_CORE, 0)

    # 3. privileges (root only)
    def world_ok(path):
        path = os.path.realpath(path)
        parts = path.split("/")
        for i in range(2, len(parts) + 1):
            st = os.stat("/".join(parts[:i]) or "/")
            need = stat.S_IXOTH if (i < len(parts) or stat.S_ISDIR(st.st_mode)) else stat.S_IROTH
            if not st.st_mode & need:
                return False
        return True
    if root:
        paths = [sys.executable] + [p for p in sys.path if p and os.path.exists(p)]
        if cfg["drop_user"] and all(world_ok(p) for p in paths):
            os.chown(sandbox, cfg["uid"], cfg["gid"])
            limit(resource.RLIMIT_NPROC, cfg["nproc"])
            os.setgroups([])
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
            status["user"], status["nproc"], status["caps_dropped"] = "nobody", cfg["nproc"], True
        elif libc is not None:
            for cap in range(64):
                libc.prctl(24, c_ulong(cap), c_ulong(0), c_ulong(0), c_ulong(0))  # PR_CAPBSET_DROP
            libc.prctl(47, c_ulong(4), c_ulong(0), c_ulong(0), c_ulong(0))  # PR_CAP_AMBIENT_CLEAR_ALL
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)
            data = (ctypes.c_uint32 * 6)()
            status["caps_dropped"] = libc.capset(header, data) == 0

    # 4. prctl and seccomp
    if libc is not None:
        status["no_new_privs"] = libc.prctl(38, c_ulong(1), c_ulong(0), c_ulong(0), c_ulong(0)) == 0
        status["pdeathsig"] = libc.prctl(1, c_ulong(signal_kill()), c_ulong(0), c_ulong(0), c_ulong(0)) == 0
        if os.getppid() != cfg["parent"]:
            os._exit(cfg["setup_exit"])  # the parent died before PDEATHSIG was set
        if cfg["seccomp"] and os.uname().machine == "x86_64" and status["no_new_privs"]:
            status["seccomp"] = install_seccomp(ctypes, libc, os.getpid())
        del libc
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.") or m == "_ctypes"]:
        del sys.modules[name]

    # 5. Python guard
    if cfg["guard"]:
        install_guard(sandbox, cfg["blocked_exit"])
        status["python_guard"] = True
    return source, status, cfg

def signal_kill():
    import signal
    return int(signal.SIGKILL)

def install_seccomp(ctypes, libc, pid):
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    KILL, ALLOW, ENOSYS = 0x80000000, 0x7FFF0000, 0x00050000 | 38
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, 0xC000003E), (RET, 0, 0, KILL), (LD, 0, 0, 0), (JGE, 0, 1, 0x40000000),
            (RET, 0, 0, KILL)]
    deny = [57, 58, 59, 322, 41, 200, 101, 310, 311, 165, 166, 155, 161, 272, 308, 169, 246, 320, 175, 313, 176,
            167, 168, 321, 298, 172, 173, 164, 227, 170, 171, 163, 424, 304, 303, 250, 248, 249, 323, 425, 426, 427,
            428, 429, 430, 431, 432, 433, 442, 434]
    for nr in deny:
        prog += [(JEQ, 0, 1, nr), (RET, 0, 0, KILL)]
    prog += [(JEQ, 0, 1, 435), (RET, 0, 0, ENOSYS)]  # clone3: glibc falls back to clone
    prog += [(JEQ, 0, 4, 56), (LD, 0, 0, 16), (JSET, 0, 1, 0x00010000), (RET, 0, 0, ALLOW), (RET, 0, 0, KILL)]
    for nr in (62, 234):  # kill, tgkill: only this process
        prog += [(JEQ, 0, 4, nr), (LD, 0, 0, 16), (JEQ, 0, 1, pid), (RET, 0, 0, ALLOW), (RET, 0, 0, KILL)]
    prog += [(RET, 0, 0, ALLOW)]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(prog))(*[Filter(*ins) for ins in prog])
    fprog = Prog(len(prog), filters)
    c_ulong = ctypes.c_ulong
    return libc.prctl(22, c_ulong(2), ctypes.byref(fprog), c_ulong(0), c_ulong(0)) == 0  # PR_SET_SECCOMP, FILTER

def install_guard(sandbox, blocked_exit):
    import _posixsubprocess
    real_exit, write, fspath, abspath, O = os._exit, os.write, os.fspath, os.path.abspath, os
    prefix = sandbox.rstrip("/") + "/"
    allowed = frozenset({sandbox, "/dev/null", "/dev/stdout", "/dev/stderr"})
    WRITE_FLAGS = O.O_WRONLY | O.O_RDWR | O.O_CREAT | O.O_TRUNC | O.O_APPEND
    BLOCK = frozenset({
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "os.startfile", "pty.spawn", "webbrowser.open",
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
        "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo", "socket.sendto", "socket.sendmsg",
        "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect", "poplib.connect",
        "imaplib.open", "nntplib.connect", "telnetlib.Telnet.open",
        "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata", "ctypes.cdata/buffer",
        "ctypes.string_at", "ctypes.wstring_at",
    })
    BLOCK_IMPORTS = frozenset({"_posixsubprocess"})  # imported (and patched) below: only a re-import is seen
    REFUSE = frozenset({"os.symlink", "os.link", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                        "os.mknod", "os.mkfifo"})
    PATH_ARGS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.chmod": (0,),
                 "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
                 "os.chflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "os.lchown": (0,)}

    def blocked(what):
        try:
            write(2, ("\nsandbox: blocked " + what + "\n").encode())
        finally:
            real_exit(blocked_exit)

    def inside(path):
        if isinstance(path, int):
            return False
        try:
            p = abspath(fspath(path))
        except Exception:
            return False
        if isinstance(p, bytes):
            p = p.decode("utf-8", "surrogateescape")
        return p in allowed or p.startswith(prefix)

    def hook(event, args):
        if event in BLOCK:
            blocked(event)
        elif event == "ctypes.dlopen":
            if args and args[0] is not None:  # `import ctypes` (numpy does) opens the main program: allowed
                blocked("ctypes.dlopen " + str(args[0]))
        elif event == "import":
            if args and args[0] in BLOCK_IMPORTS:
                blocked("import " + str(args[0]))
        elif event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = bool((flags or 0) & WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not isinstance(path, int) and not inside(path):
                raise PermissionError(13, "sandbox: writing outside the sandbox directory is not allowed", str(path))
        elif event in PATH_ARGS:
            for i in PATH_ARGS[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(13, "sandbox: changes outside the sandbox directory are not allowed",
                                          str(args[i]))
        elif event in REFUSE:
            raise PermissionError(13, "sandbox: " + event + " is not allowed")

    def fork_exec(*args, **kwargs):
        blocked("_posixsubprocess.fork_exec")

    _posixsubprocess.fork_exec = fork_exec
    sys.addaudithook(hook)

try:
    _source, _status, _cfg = _setup()
except BaseException as _exc:
    try:
        os.write(2, ("\nsandbox setup failed: %s: %s\n" % (type(_exc).__name__, _exc)).encode())
    finally:
        os._exit(json.loads(sys.argv[1])["setup_exit"])
if _cfg["mode"] == "probe":
    sys.stdout.write(json.dumps(_status))
    sys.stdout.flush()
    os._exit(0)
try:
    _code = compile(_source, "solution.py", "exec", dont_inherit=True)
except SyntaxError:
    if _cfg["mode"] == "auto":
        os.write(2, b"\nsandbox: text without a code fence that does not parse as Python\n")
        os._exit(_cfg["no_code_exit"])
    raise
import types as _types
_main = _types.ModuleType("__main__")
_main.__file__ = "solution.py"
_main.__builtins__ = __builtins__
sys.modules["__main__"] = _main
sys.argv = ["solution.py"]
del _setup, signal_kill, install_seccomp, install_guard, _source, _status, _cfg, _types
exec(_code, _main.__dict__)
"""


# -------------------------------------------------------------------------------------------------- runner


@dataclass
class _Run:
    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    elapsed: float = 0.0
    cpu: float = 0.0
    timed_out: bool = False
    overflow: bool = False


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def _minimal_env(cwd: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": cwd,
        "TMPDIR": cwd,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }


def _execute(cfg: dict, source: bytes, stdin_data: bytes, wall_s: float, out_cap: int, python: str) -> _Run:
    """One process in a fresh temporary directory; the group is killed and the directory removed afterwards."""
    run = _Run()
    workdir = tempfile.mkdtemp(prefix="varreason-sandbox-")
    proc = None
    files = []
    sel = None
    try:
        os.chmod(workdir, 0o700)
        code_path = os.path.join(workdir, "solution.py")
        with open(code_path, "wb") as f:
            f.write(source)
        os.chmod(code_path, 0o644)
        cfg = dict(cfg, code_path=code_path, parent=os.getpid())
        proc = subprocess.Popen(
            [python, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_minimal_env(workdir),
            start_new_session=True,
            bufsize=0,
            close_fds=True,
        )
        start = time.monotonic()
        deadline = start + wall_s
        pid = proc.pid
        files = [proc.stdin, proc.stdout, proc.stderr]
        sel = selectors.DefaultSelector()
        out, err = bytearray(), bytearray()
        pending = memoryview(stdin_data)
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        pidfd = None
        try:
            pidfd = os.pidfd_open(pid)
            sel.register(pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):
            pidfd = None
        exited = False
        drain_until = None
        open_pipes = 2
        while open_pipes or not exited:
            now = time.monotonic()
            if not exited and now >= deadline:
                run.timed_out = True
                break
            if exited and now >= drain_until:
                break
            limit = (drain_until if exited else deadline) - now
            if pidfd is None:
                limit = min(limit, 0.02)
            for key, _ in sel.select(max(limit, 0.0)):
                obj = key.fileobj
                if obj is proc.stdin:
                    try:
                        n = os.write(proc.stdin.fileno(), pending[: 1 << 16])
                        pending = pending[n:]
                    except BlockingIOError:
                        continue
                    except OSError:  # BrokenPipe: the program does not read its input
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                elif obj is pidfd:
                    sel.unregister(pidfd)
                    exited = True
                else:
                    chunk = os.read(obj.fileno(), 1 << 16)
                    if not chunk:
                        sel.unregister(obj)
                        open_pipes -= 1
                    elif obj is proc.stdout:
                        out += chunk
                    else:
                        err += chunk
                        if len(err) > 2 * STDERR_TAIL_BYTES:
                            del err[:-STDERR_TAIL_BYTES]
            if len(out) > out_cap:
                run.overflow = True
                break
            if pidfd is None and not exited:
                exited = _exited(pid)
            if exited and drain_until is None:
                _killpg(pid)  # descendants (there should be none) die with the leader; the pgid is still ours
                drain_until = min(deadline, time.monotonic() + 1.0)
        run.elapsed = time.monotonic() - start
        _killpg(pid)
        if not exited:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            _killpg(pid)
        _, status, usage = os.wait4(pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        run.returncode = proc.returncode
        run.cpu = usage.ru_utime + usage.ru_stime
        run.stdout, run.stderr = bytes(out), bytes(err[-STDERR_TAIL_BYTES:])
        if pidfd is not None:
            os.close(pidfd)
        return run
    finally:
        if proc is not None and proc.returncode is None:  # an exception above: leave nothing behind
            _killpg(proc.pid)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        if sel is not None:
            sel.close()
        for f in files:
            try:
                f.close()
            except OSError:
                pass
        _rmtree(workdir)


def _last_line(data: bytes) -> str:
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        if line.strip():
            line = line.strip()
            return line if len(line) <= 300 else line[:297] + "..."
    return ""


_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "Unable to allocate", "out of memory")


def _verdict(i: int, run: _Run, expected: str, time_limit_s: float, cpu_limit: int, out_cap: int) -> CaseResult:
    def result(passed: bool, reason: str) -> CaseResult:
        return CaseResult(passed, reason, round(run.elapsed, 4), round(run.cpu, 4))

    rc = run.returncode
    last = _last_line(run.stderr)
    if rc == BLOCKED_EXIT and last.startswith("sandbox: blocked"):
        return result(False, f"blocked: fork/network (test {i}): {last[len('sandbox: blocked ') :]}")
    if rc == -signal.SIGSYS:
        return result(False, f"blocked: fork/network (test {i}): forbidden system call (seccomp)")
    if rc == SETUP_ERROR_EXIT and last.startswith("sandbox setup failed"):
        if any(marker in last for marker in _MEMORY_MARKERS + ("failed to map segment",)):
            return result(False, f"memory limit (test {i})")  # too little memory to even start
        return result(False, f"sandbox error: {last}")
    if run.overflow:
        return result(False, f"wrong answer (test {i}): output exceeds {out_cap} bytes")
    if run.timed_out or rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and run.cpu >= cpu_limit - 0.05):
        return result(False, f"time limit (test {i})")
    if any(marker in last for marker in _MEMORY_MARKERS) or rc == -signal.SIGKILL:
        return result(False, f"memory limit (test {i})")
    if run.cpu > time_limit_s:
        return result(False, f"time limit (test {i})")
    if rc != 0:
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            return result(False, f"runtime error (test {i}): killed by {name}" + (f" ({last})" if last else ""))
        return result(False, f"runtime error (test {i}): {last or f'exit status {rc}'}")
    actual = run.stdout.decode("utf-8", "replace")
    if outputs_match(actual, expected):
        return result(True, "passed")
    return result(False, f"wrong answer (test {i})")


def _config(time_limit_s: float, memory_mb: int, mode: str) -> dict:
    return {
        "cpu_s": max(1, math.ceil(time_limit_s)),
        "memory_bytes": int(memory_mb) << 20,
        "fsize_bytes": FILE_SIZE_LIMIT_MB << 20,
        "nofile": OPEN_FILES_LIMIT,
        "nproc": NPROC_LIMIT,
        "uid": NOBODY_UID,
        "gid": NOBODY_GID,
        "drop_user": True,
        "namespaces": True,
        "seccomp": bool(_SECCOMP),
        "guard": bool(_PYTHON_GUARD),
        "mode": mode,
        "blocked_exit": BLOCKED_EXIT,
        "no_code_exit": NO_CODE_EXIT,
        "setup_exit": SETUP_ERROR_EXIT,
    }


def run_tests(
    code: str,
    tests: list[dict],
    time_limit_s: float = 6.0,
    memory_mb: int = 512,
    *,
    extract: bool | None = None,
    stop_on_failure: bool = True,
    python: str | None = None,
) -> SandboxResult:
    """Run `code` on every test (stdin `input` -> expected stdout `output`); all must pass. Never raises.

    `extract`: None (default) runs the last Python / untagged fenced block (`extract_code`) when there is one, and
    otherwise the text itself, unless it does not parse as Python (prose, a C++ block): then "no code block";
    True requires a block ("no code block" without one); False runs the text as is.
    Each test runs in its own process and temporary directory with `time_limit_s` CPU seconds (interpreter start-up,
    about 0.04 s, included; the wall clock allows 2 x time_limit_s + 1), `memory_mb` MiB of address space (below
    about 16 MiB Python cannot start: "memory limit") and the protections in the module docstring.
    `python` is the interpreter (default: this one).
    """
    try:
        if isinstance(code, bytes):
            code = code.decode("utf-8", "replace")
        if not isinstance(code, str):
            return SandboxResult(False, f"sandbox error: code must be a string, got {type(code).__name__}")
        try:
            time_limit_s = float(time_limit_s)
            memory_mb = int(memory_mb)
        except (TypeError, ValueError, OverflowError):
            return SandboxResult(False, "sandbox error: time_limit_s and memory_mb must be numbers")
        if not (math.isfinite(time_limit_s) and time_limit_s > 0) or memory_mb <= 0:
            return SandboxResult(False, "sandbox error: time_limit_s and memory_mb must be positive")
        if not isinstance(tests, (list, tuple)) or not tests:
            return SandboxResult(False, "sandbox error: no tests")
        cases = []
        for i, test in enumerate(tests):
            if (
                not isinstance(test, dict)
                or not isinstance(test.get("output"), str)
                or not isinstance(test.get("input", ""), str)
            ):
                return SandboxResult(False, f"sandbox error: test {i} is not {{'input': str, 'output': str}}")
            cases.append((test.get("input", ""), test["output"]))

        mode = "raw"
        if extract is not False:
            body = extract_code(code)
            if body is not None:
                code = body
            elif extract:
                return SandboxResult(False, "no code block", [CaseResult(False, "not run") for _ in cases])
            else:
                mode = "auto"  # run the text itself, unless it does not parse as Python: "no code block"
        cfg = _config(time_limit_s, memory_mb, mode)
        wall_s = 2 * time_limit_s + 1
        source = code.encode("utf-8", "surrogatepass")
        exe = python or sys.executable

        details: list[CaseResult] = []
        first_failure = None
        for i, (stdin_text, expected) in enumerate(cases):
            if first_failure is not None and stop_on_failure:
                details.append(CaseResult(False, "not run"))
                continue
            out_cap = max(OUTPUT_LIMIT_BYTES, 2 * len(expected.encode("utf-8", "replace")))
            try:
                run = _execute(cfg, source, stdin_text.encode("utf-8", "surrogatepass"), wall_s, out_cap, exe)
            except Exception as exc:  # noqa: BLE001
                return SandboxResult(False, f"sandbox error: {type(exc).__name__}: {exc}", details)
            if run.returncode == NO_CODE_EXIT and mode == "auto":
                return SandboxResult(False, "no code block", [CaseResult(False, "not run") for _ in cases])
            case = _verdict(i, run, expected, time_limit_s, cfg["cpu_s"] + 1, out_cap)
            details.append(case)
            if not case.passed and first_failure is None:
                first_failure = case
        if first_failure is not None:
            return SandboxResult(False, first_failure.reason, details)
        return SandboxResult(True, "passed", details)
    except Exception as exc:  # noqa: BLE001 - never raises
        return SandboxResult(False, f"sandbox error: {type(exc).__name__}: {exc}")


@functools.lru_cache(maxsize=8)
def _probe(python: str) -> str:
    run = _execute(_config(5.0, 512, "probe"), b"", b"", 11.0, OUTPUT_LIMIT_BYTES, python)
    if run.returncode != 0:
        raise RuntimeError(_last_line(run.stderr) or f"exit status {run.returncode}")
    return run.stdout.decode()


def sandbox_protections(python: str | None = None) -> dict:
    """What the bootstrap achieved on this machine (cached): euid, user ("root" | "nobody" | "self"), netns,
    readonly_fs, caps_dropped, no_new_privs, pdeathsig, seccomp, python_guard, nproc; {"error": ...} on failure."""
    try:
        return json.loads(_probe(python or sys.executable))
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
