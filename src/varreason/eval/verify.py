"""Answer checking. Nothing here raises: every failure is a wrong answer with a reason.

A reward that can crash, hang or be fooled breaks a training run, so every checker returns a `Verdict` with
`correct` and one `reason`:
  "correct" | "wrong" | "unparseable_gold" | "unparseable_prediction" | "timeout" | "error: <Type>: <msg>".

- `check_integer`: exact integer match (the built-in arithmetic families). Pure Python, microseconds.
- `check_math`: symbolic equivalence with math-verify (gold parsed first, then the prediction, then
  `verify(gold, pred)`: the argument order matters, open-r1#557). A gold answer that parses to nothing is never
  correct, whatever the prediction is (open-r1#215: empty gold vs empty prediction used to score 1.0).
  math-verify's own timeout uses `signal.alarm`, which fails off the main thread (Math-Verify#50, #55), so it is
  switched off and replaced by ours: the check runs in one persistent worker process; a call that takes longer
  than `timeout_s` kills the worker (the next call starts a new one) and returns "timeout". Plain numbers on both
  sides are compared in-process without the worker.
- `check_answer`: dispatch on the answer kind ("integer" | "math").
- `extract_boxed`: the content of the last `\\boxed{...}`, braces matched.
- `guarded`: wraps a third-party scorer (e.g. reasoning-gym's `score_answer`) into the same contract.

Inputs: `str` is used as is; `bytes` is decoded as UTF-8 (bad bytes replaced); numbers are written out in plain
decimal; `None` is a missing text (an unparseable gold, an empty prediction); any other type is an
"error: TypeError" verdict. Texts longer than `MAX_CHARS` are cut to their last `MAX_CHARS` characters: final
answers come last, and the cut bounds the work a single check can cause.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import numbers
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal

MAX_CHARS = 20_000  # longer texts keep only their tail
DEFAULT_TIMEOUT_S = 5.0
WORKER_STARTUP_TIMEOUT_S = 120.0  # importing sympy on a slow CI machine; not counted in a call's timeout_s
WORKER_GRACE_S = 2.0  # a worker whose check outlives timeout_s by this much ends itself (orphaned worker)
# Address-space cap for the math worker (Linux), so a pathological input fails with MemoryError instead of
# swapping the machine; 0 switches it off.
WORKER_MEMORY_MB = int(os.environ.get("VARREASON_VERIFY_MEMORY_MB", "4096") or 0)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # "correct" | "wrong" | "unparseable_gold" | "unparseable_prediction" | "timeout" | "error: ..."

    def __bool__(self) -> bool:
        return self.correct


def _error(exc: BaseException) -> Verdict:
    msg = str(exc)
    if len(msg) > 200:
        msg = msg[:200] + "..."
    return Verdict(False, f"error: {type(exc).__name__}: {msg}")


def as_text(value: object, what: str) -> str | None:
    """Coerce a checker input to text (see the module docstring); None stays None; bad types raise TypeError."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", errors="replace")
    elif isinstance(value, numbers.Number) and not isinstance(value, bool):
        text = _number_text(value)
    else:
        raise TypeError(f"{what} must be str, bytes or a number, not {type(value).__name__}")
    return text[-MAX_CHARS:] if len(text) > MAX_CHARS else text


def _number_text(value: numbers.Number) -> str:
    """Plain decimal text for a number: math-verify reads `1e+20` as 1, so no exponent notation."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            return str(x)
        return format(Decimal(repr(x)), "f")
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# Integers


# The last number: thousands groups ("1,234,567") or plain digits, an optional sign not glued to a preceding
# word or digit ("10-5" is not -5), an optional decimal part (so "3.5" is not read as 5).
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212])?(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.(?P<frac>[0-9]+))?"
)


def parse_integer(text: object) -> int | None:
    """The last number in `text` (thousands separators allowed) if it is an integer ("7.0" is 7), else None.

    A last number with a non-zero decimal part ("3.5") gives None rather than its digits after the point.
    """
    try:
        if isinstance(text, bool) or text is None:
            return None
        if isinstance(text, numbers.Integral):
            return int(text)
        if isinstance(text, numbers.Real):
            x = float(text)
            return int(x) if math.isfinite(x) and x.is_integer() else None
        s = as_text(text, "text")
        if not s:
            return None
        last = None
        for last in _NUMBER.finditer(s):
            pass
        if last is None:
            return None
        if last.group("frac") and last.group("frac").strip("0"):
            return None
        value = int(last.group("int").replace(",", ""))
        return -value if last.group("sign") in ("-", "\u2212") else value
    except Exception:  # noqa: BLE001 - e.g. int() refusing more than 4300 digits
        return None


def check_integer(gold: object, prediction: object) -> Verdict:
    """Exact integer match; the verifier of the built-in arithmetic families."""
    try:
        g = parse_integer(gold)
        if g is None:
            return Verdict(False, "unparseable_gold")
        p = parse_integer(prediction)
        if p is None:
            return Verdict(False, "unparseable_prediction")
        return Verdict(g == p, "correct" if g == p else "wrong")
    except Exception as exc:  # noqa: BLE001 - a verifier never raises
        return _error(exc)


# ---------------------------------------------------------------------------------------------------------------
# \boxed{...}

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: object) -> str | None:
    """The content of the last top-level `\\boxed{...}` (or `\\fbox{...}`), nested braces matched, else None.

    Escaped braces (`\\{`, `\\}`) do not count. If the last box never closes (a generation cut off inside it),
    the answer is None rather than an earlier box: a truncated final answer is no answer.
    """
    try:
        s = as_text(text, "text") if not isinstance(text, str) else text
    except TypeError:
        return None
    if not s:
        return None
    found: str | None = None
    pos = 0
    while True:
        m = _BOX.search(s, pos)
        if m is None:
            return found
        depth, i, start = 1, m.end(), m.end()
        while i < len(s) and depth:
            c = s[i]
            if c == "\\":
                i += 2  # skip the escaped character (\{, \}, \\)
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            i += 1
        if depth:
            return None  # the last box is unclosed
        found = s[start : i - 1]
        pos = i


# ---------------------------------------------------------------------------------------------------------------
# math-verify: the check itself (runs inside the worker process)

_PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _unwrap(text: str) -> str:
    """Strip whitespace, one pair of `$`/`$$` and one enclosing `\\boxed{}`, for the plain-number fast path."""
    s = text.strip()
    for fence in ("$$", "$"):
        if len(s) > 2 * len(fence) - 1 and s.startswith(fence) and s.endswith(fence):
            s = s[len(fence) : -len(fence)].strip()
            break
    if s.startswith("\\boxed{") and s.endswith("}") and extract_boxed(s) == s[7:-1]:
        s = s[7:-1].strip()
    return s


def _fast_reason(gold: str, prediction: str) -> str | None:
    """The verdict for plain numbers without math-verify, or None when math-verify must decide.

    Only cases where math-verify gives the same answer: equal decimals are correct ("2" vs "2.0"), different
    integers are wrong, an empty prediction is unparseable. Everything else (near decimals, which math-verify
    rounds, expressions, text) goes to the worker.
    """
    g = _unwrap(gold)
    if not _PLAIN_NUMBER.fullmatch(g):
        return None
    p = _unwrap(prediction)
    if not p:
        return "unparseable_prediction"
    if not _PLAIN_NUMBER.fullmatch(p):
        return None
    if Decimal(g) == Decimal(p):
        return "correct"
    if "." not in g and "." not in p:
        return "wrong"
    return None


def _math_verify_reason(gold: str, prediction: str) -> str:
    """The unbounded math-verify check; call it only where something else bounds its time (the worker)."""
    from math_verify import parse, verify

    gold_parsed = parse(gold, parsing_timeout=None)
    if not gold_parsed:
        return "unparseable_gold"
    pred_parsed = parse(prediction, parsing_timeout=None)
    if not pred_parsed:
        return "unparseable_prediction"
    ok = verify(gold_parsed, pred_parsed, timeout_seconds=None)  # gold first: open-r1#557
    return "correct" if ok else "wrong"


def _worker_main() -> None:
    """Serve checks until stdin closes: one JSON line in (gold "g", prediction "p", timeout "t"), one out ("r")."""
    import faulthandler
    import logging
    import signal

    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    with suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    if WORKER_MEMORY_MB > 0:
        with suppress(Exception):  # best effort: not on every platform
            import resource

            limit = WORKER_MEMORY_MB * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # the "timeout is disabled" warning: we bound it

    # Our own bound, independent of the parent: if a check outlives its timeout by WORKER_GRACE_S (the parent
    # should have killed us; it may itself have been killed), faulthandler's C watchdog thread, which needs no
    # GIL and so also fires inside a long C call such as a huge integer power, ends this process.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - must stay open for faulthandler

    _math_verify_reason("\\boxed{\\frac{1}{2}}", "0.5")  # warm up (grammar, caches) before taking requests
    out.write(b"ready\n")
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            faulthandler.dump_traceback_later(float(request["t"]) + WORKER_GRACE_S, exit=True, file=devnull)
            reason = _math_verify_reason(request["g"], request["p"])
        except Exception as exc:  # noqa: BLE001
            reason = _error(exc).reason
        finally:
            faulthandler.cancel_dump_traceback_later()
        out.write((json.dumps({"r": reason}) + "\n").encode())


# ---------------------------------------------------------------------------------------------------------------
# math-verify: the worker process, seen from the caller


class _WorkerError(RuntimeError):
    pass


class _MathWorker:
    """One persistent child process per process that runs `_math_verify_reason`; calls are serialised by a lock.

    A plain `subprocess` rather than `multiprocessing`: it works from daemonic processes (multiprocessing.Pool
    workers may not have children) and never re-imports the user's `__main__`. The child runs this file by path,
    so it imports neither the rest of varreason nor torch.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.buffer = b""

    def check(self, gold: str, prediction: str, timeout_s: float) -> str:
        """The worker's reason for one pair; "timeout" after `timeout_s` s; raises if the worker fails."""
        request = (json.dumps({"g": gold, "p": prediction, "t": timeout_s}) + "\n").encode()
        with self.lock:
            try:
                return self._exchange(request, timeout_s)
            except BaseException:
                # Whatever broke (Ctrl-C included), a request may be in flight: its answer must never be read as
                # the answer to the next one, so this worker goes.
                self._stop()
                raise

    def _exchange(self, request: bytes, timeout_s: float) -> str:
        for attempt in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self._stop()
                self._start()
            try:
                _write_all(self.proc.stdin.fileno(), request)
                break
            except OSError:  # the worker died while idle: restart once
                self._stop()
                if attempt:
                    raise
        line = self._read_line(time.monotonic() + timeout_s)
        if line is None:
            self._stop()  # a hung check: kill it; the next call starts a fresh worker
            return "timeout"
        if not line:
            raise _WorkerError(f"math-verify worker exited (code {self.proc.poll()}) during the check")
        return json.loads(line)["r"]

    def _start(self) -> None:
        code = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1])['_worker_main']()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self.buffer = b""
        line = self._read_line(time.monotonic() + WORKER_STARTUP_TIMEOUT_S)
        if line != b"ready\n":
            self._stop()
            raise _WorkerError("math-verify worker failed to start" + (" (timed out)" if line is None else ""))

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the worker: bytes, b"" at end of file, None past the deadline."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            chunk = _read_chunk(fd, remaining) if remaining > 0 else None
            if chunk is None:
                return None
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def _stop(self) -> None:
        proc, self.proc, self.buffer = self.proc, None, b""
        if proc is None:
            return
        with suppress(Exception):
            proc.kill()
            proc.wait(timeout=5)
        for f in (proc.stdin, proc.stdout):
            with suppress(Exception):
                f.close()

    def shutdown(self) -> None:
        """Close the worker's stdin (it exits at end of file); kill it if it does not exit within a second."""
        with self.lock:
            proc = self.proc
            if proc is None:
                return
            with suppress(Exception):
                proc.stdin.close()
                proc.wait(timeout=1)
            self._stop()

    def forget(self) -> None:
        """In a forked child: drop the parent's worker without touching it (it is the parent's)."""
        proc, self.proc, self.buffer, self.lock = self.proc, None, b"", threading.Lock()
        if proc is not None:
            for f in (proc.stdin, proc.stdout):  # only our copies of the pipe ends
                with suppress(Exception):
                    f.close()
            proc.returncode = 0  # not our child: keep Popen.__del__ / waitpid away from it


def _read_chunk(fd: int, timeout_s: float) -> bytes | None:
    """Bytes from `fd` (b"" at end of file) as soon as there are some, or None after `timeout_s` seconds."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(max(1, math.ceil(timeout_s * 1000))):
            return None
        return os.read(fd, 1 << 16)
    # Windows pipes cannot be polled: read in a helper thread; after a timeout the worker is killed, which ends it.
    q: queue.Queue = queue.Queue(maxsize=1)

    def reader() -> None:
        try:
            q.put(os.read(fd, 1 << 16))
        except OSError:
            q.put(b"")

    threading.Thread(target=reader, daemon=True).start()
    try:
        return q.get(timeout=timeout_s)
    except queue.Empty:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_WORKER = _MathWorker()
atexit.register(lambda: _WORKER.shutdown())
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _WORKER.forget())


def shutdown_worker() -> None:
    """Stop the math-verify worker process now (also done at exit); the next `check_math` starts a new one."""
    with suppress(Exception):
        _WORKER.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# The public checkers


def check_math(gold: object, prediction: object, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Mathematical equivalence of `prediction` to `gold` with math-verify, in bounded time; never raises.

    Plain numbers on both sides are decided in-process (microseconds); everything else goes to the worker
    process (about a millisecond per call once it runs; its start-up, about a second, is not counted in
    `timeout_s`). Past `timeout_s` the worker is killed and the verdict is "timeout".
    """
    try:
        g = as_text(gold, "gold")
        p = as_text(prediction, "prediction")
        if g is None or not g.strip():
            return Verdict(False, "unparseable_gold")
        p = p or ""
        reason = _fast_reason(g, p)
        if reason is None:
            t = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
            if not (t > 0 and math.isfinite(t)):
                raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")
            reason = _WORKER.check(g, p, t)
        return Verdict(reason == "correct", reason)
    except Exception as exc:  # noqa: BLE001 - a verifier never raises
        return _error(exc)


ANSWER_KINDS = ("integer", "math")


def check_answer(gold: object, prediction: object, kind: str = "math", timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Check with the verifier for the answer kind: "integer" (exact integer) or "math" (math-verify)."""
    if kind == "integer":
        return check_integer(gold, prediction)
    if kind == "math":
        return check_math(gold, prediction, timeout_s=timeout_s)
    return Verdict(False, f"error: unknown answer kind {kind!r} (expected one of {', '.join(ANSWER_KINDS)})")


def guarded(scorer: Callable[..., object], timeout_s: float | None = None) -> Callable[..., Verdict]:
    """Wrap a third-party scorer (e.g. reasoning-gym's `score_answer`) so it behaves like our checkers.

    A score >= 1 is correct. An exception, a non-number (a string included), NaN or infinity is a wrong answer
    with an "error: ..." reason; a `Verdict` is passed through. With `timeout_s`, a call that runs longer returns
    "timeout": the scorer runs in a daemon thread that cannot be stopped in-process, so the caller's wait is
    bounded but a stuck scorer keeps using CPU until it returns. Use it as a safety net, not a sandbox.
    """

    def score_once(args, kwargs) -> Verdict:
        try:
            value = scorer(*args, **kwargs)
            if isinstance(value, Verdict):
                return value
            if isinstance(value, (str, bytes, bytearray)):
                return Verdict(False, f"error: scorer returned a non-number: {type(value).__name__}")
            score = float(value)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        if math.isnan(score):
            return Verdict(False, "error: scorer returned NaN")
        if not math.isfinite(score):
            return Verdict(False, f"error: scorer returned {score}")
        return Verdict(score >= 1.0, "correct" if score >= 1.0 else "wrong")

    @functools.wraps(scorer)
    def wrapped(*args, **kwargs) -> Verdict:
        if timeout_s is None:
            return score_once(args, kwargs)
        result: list[Verdict] = []
        thread = threading.Thread(target=lambda: result.append(score_once(args, kwargs)), daemon=True)
        thread.start()
        thread.join(timeout_s)
        return result[0] if result else Verdict(False, "timeout")

    return wrapped
