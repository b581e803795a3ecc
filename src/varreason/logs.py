"""Where output goes: ours to the terminal, the libraries' chatter to the run's log file.

The terminal (stderr) gets the stage lines, one progress bar per stage, one line per training log step and our own
warnings; stdout gets the results table. `<output_dir>/logs/run.log` (appended, timestamped) gets the rest:
transformers / datasets / TRL / accelerate / vLLM logs and Python warnings, the HF Trainer's metric dicts, and what
vLLM's engine processes print (their stdout and stderr point at the file: `output_to_log`). transformers' own
"Loading weights" / "Writing model shards" bars are off while a run log is open (Hub download bars stay on).

    with run_log(run_dir):          # pipeline.run_all; every process of a group has its own file (see `log_name`)
        ...
        route_libraries()           # again after a library was first imported mid-run (vLLM, TRL, datasets)

`mark_start()` (cli.main) records when the command began (`take_start` in run_all reads it), so the final line can
give its true wall time, start-up, imports and model loads included, beside the time of the stages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

OURS = ("varreason", "__main__")  # loggers whose warnings the user sees in the terminal
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PACKAGE_DIR = str(Path(__file__).resolve().parent)

_started: float | None = None
_open: list[_LogFile] = []  # the run logs open now, innermost last
_routed: dict[str, tuple[list[logging.Handler], bool]] = {}  # library logger -> (its handlers, propagate) to restore
_redirects: list = []  # files that stood in for sys.stdout / sys.stderr (`output_to_log`), closed with the run log


def mark_start(process: bool = False) -> None:
    """The command starts now (cli.main calls this first), or with `process` when this process started (the
    `varreason` command: Python's start-up and our imports count too; Linux's /proc tells, else now)."""
    global _started
    age = (_process_age() or 0.0) if process else 0.0
    _started = time.perf_counter() - age


def _process_age() -> float | None:
    """Seconds since this process started, from /proc (Linux; None elsewhere). Clock ticks: 10 ms resolution."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22 of stat: starttime
    except (OSError, ValueError, IndexError):
        return None


def take_start() -> float | None:
    """The `time.perf_counter()` at `mark_start`, handed out once (None without one: library use), so a later
    `run_all` in the same process never counts from an old command's start."""
    global _started
    started, _started = _started, None
    return started


def current_log() -> Path | None:
    return Path(_open[-1].baseFilename) if _open else None


def log_name(index: int = 0, count: int = 1, group: bool = False) -> str:
    """run.log for one process or rank 0 of a group; run.rank<i>.log for the other ranks; run.shard<i>-of-<n>.log
    for a `--shard` job (separate jobs may share a folder on several machines: each appends to its own file)."""
    if count > 1 and not group:
        return f"run.shard{index}-of-{count}.log"
    return "run.log" if index == 0 else f"run.rank{index}.log"


class _Terminal(logging.Filter):
    """On the terminal's handlers: our records at the terminal's level, anything else only from ERROR up."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return False
        if record.name.split(".")[0] in OURS or record.levelno >= logging.ERROR:
            return True
        return record.name == "py.warnings" and _PACKAGE_DIR in record.getMessage()  # a warning raised in our code


class _LogFile(logging.FileHandler):
    """The run log, made on its first record (a command refused at once leaves nothing behind), under a line naming
    the command. A record that cannot be written (a full disk) is dropped without a word: the run goes on, and fails,
    if it must, with its own one-line error."""

    def __init__(self, path: Path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.setLevel(logging.INFO)

    def _open(self):
        try:
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            stream = super()._open()
        except OSError:  # a full or read-only disk: logging must not be what stops the run
            return open(os.devnull, "w", encoding="utf-8")  # (closed with the handler)
        stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} --- {' '.join(sys.argv)} (pid {os.getpid()})\n")
        return stream

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def start(self) -> Path:
        """The file with its first line, as the first record would make them (before others append to it)."""
        with self.lock:
            if self.stream is None:
                self.stream = self._open()
        return Path(self.baseFilename)


def _is_terminal_handler(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler  # exactly: not a FileHandler, nor pytest's capturing handlers


def route_libraries() -> None:
    """Library loggers that print to the terminal by themselves (transformers, datasets and vLLM add a stream handler
    of their own) pass their records to the root logger instead, whose handlers send them to the run log. Called again
    after a library is first imported mid-run; undone when the run log closes."""
    if not _open:
        return
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name.split(".")[0] in OURS or name in _routed:
            continue
        handlers = [h for h in logger.handlers if _is_terminal_handler(h)]
        if handlers:
            _routed[name] = (handlers, logger.propagate)
            for h in handlers:
                logger.removeHandler(h)
            logger.propagate = True


def _unroute() -> None:
    for name, (handlers, propagate) in _routed.items():
        logger = logging.getLogger(name)
        for h in handlers:
            if getattr(h, "stream", None) not in _redirects:  # one made inside `output_to_log` writes to the log
                logger.addHandler(h)
        logger.propagate = propagate
    _routed.clear()
    while _redirects:
        with contextlib.suppress(OSError):
            _redirects.pop().close()


@contextlib.contextmanager
def _library_bars_off():
    """transformers' own tqdm bars ("Loading weights", "Writing model shards") off; the Hub's download bars, which
    `transformers.utils.logging.disable_progress_bar` also turns off, back as they were."""
    if "transformers" not in sys.modules:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    was_on, hub_was_on = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if hub_was_on:
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def run_log(folder: str | Path, name: str = "run.log"):
    """For the length of a command: library logs and warnings into `<folder>/logs/<name>` (appended, timestamped,
    made on the first record), our own warnings and any library error still on the terminal. Nested: the innermost
    file only."""
    root = logging.getLogger()
    terminal_level = root.getEffectiveLevel()  # WARNING (cli.main), ERROR on ranks > 0
    quiet = _Terminal(terminal_level)
    terminal = [h for h in root.handlers if _is_terminal_handler(h)]
    for h in terminal:
        h.addFilter(quiet)
    outer = _open[-1] if _open else None
    if outer is not None:
        root.removeHandler(outer)
    log_file = _LogFile(Path(folder) / "logs" / name)
    root.addHandler(log_file)
    _open.append(log_file)
    root_level = root.level
    root.setLevel(min(terminal_level, logging.INFO))
    captured = logging._warnings_showwarning is not None  # whether warnings went to logging already
    logging.captureWarnings(True)
    try:
        with _library_bars_off():
            route_libraries()
            yield Path(log_file.baseFilename)
    finally:
        _open.pop()
        if not _open:
            _unroute()
        if not captured:
            logging.captureWarnings(False)
        root.setLevel(root_level)
        root.removeHandler(log_file)
        with contextlib.suppress(OSError):  # a full disk: what did not fit is dropped
            log_file.close()
        if outer is not None:
            root.addHandler(outer)
        for h in terminal:
            h.removeFilter(quiet)


@contextlib.contextmanager
def output_to_log():
    """This process's stdout and stderr (the file descriptors, so C code and child processes included) into the open
    run log for the block; nothing changes when no run log is open. Around the start of vLLM's engine: the processes
    it spawns inherit the descriptors and keep writing to the file for their whole life, while ours come back."""
    if not _open:
        yield
        return
    path = _open[-1].start()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    log_file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - open until the run log closes: a
    _redirects.append(log_file)  # handler made in the block (vLLM's, on sys.stdout) holds it until routed
    try:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):  # sys.stdout may not be fd 1
            yield
    except Exception as exc:  # the library's own account of it (a child's traceback, say) is in the file
        exc.add_note(f"(what the library printed, the root cause included, is in {path})")
        raise
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
