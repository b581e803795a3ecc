"""What a person reads: our stage lines, one compact line per training log step and the results table in the terminal;
the libraries' chatter (transformers, vLLM and its engine processes, Python warnings) in <output_dir>/logs/run.log;
a resumed training said so; the wall time true to the command; no difficulty columns where none was given."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time

import pytest

from varreason.cli import main

TRAINING_LINE = re.compile(r"^  (\S+)  step (\d+)/(\d+)  loss [\d.e+-]+  \(per token [\d.e+-]+\)  lr [\d.e+-]+  "
                           r"grad [\d.e+-]+  [\d.]+ s$")
LIBRARY_CHATTER = ("{'loss'", "'train_runtime'", "Loading weights", "Writing model shards", "[transformers]",
                   "missing keys", "mtime may not be reliable")


def _user_data(tmp_path, n: int = 40):
    """A JSONL of sums with no difficulty column (every problem gets difficulty 0: "not given")."""
    src = tmp_path / "mine.jsonl"
    rows = [{"question": f"What is {i}+{i}?", "trace": f"{i}+{i}={2 * i}", "answer": str(2 * i)} for i in range(n)]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return src


def _stage_blocks(lines: list[str]) -> dict[str, list[str]]:
    """The lines printed under each `- stage` header, up to the next header or the report line."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith("- "):
            current = line[2:].split()[0].rstrip(":")
            blocks[current] = []
        elif line.startswith("report:"):
            current = None
        elif current is not None:
            blocks[current].append(line)
    return blocks


def test_a_run_shows_our_lines_and_logs_the_libraries(tmp_path, capfd):
    out = tmp_path / "run"
    start = time.perf_counter()
    code = main(["run", "--config", "smoke", "--output-dir", str(out), "--task.source", str(_user_data(tmp_path))])
    measured = time.perf_counter() - start
    assert code == 0
    captured = capfd.readouterr()
    terminal = captured.out + captured.err
    for chatter in LIBRARY_CHATTER:
        assert chatter not in terminal, chatter

    err = captured.err.split("\n")  # (not splitlines: a bar's redraws, split at "\r", are one line)
    training = [m for m in map(TRAINING_LINE.match, err) if m]
    by_stage = {}
    for m in training:
        by_stage.setdefault(m.group(1), []).append(int(m.group(2)))
    assert by_stage["initial"] == [2, 4, 6] and by_stage["posterior"] == [2, 4] and by_stage["final"] == [2, 4]
    blocks = _stage_blocks(err)
    assert list(blocks)[:3] == ["data", "base", "initial"] and "eval" in blocks
    long = {stage: lines for stage, lines in blocks.items() if len(lines) > 4}
    assert not long, long  # a bar or two, or one line per training log step
    assert len(captured.out.split("\n")) + len(err) <= 45

    # stdout: the table and the wall time, nothing in between; no difficulty columns when none was given
    table = captured.out[captured.out.index("Held-out accuracy"):].splitlines()
    assert all(line[:1] in "┏┃┡│└" or line.strip() in ("no difficulty given", "")
               or line.startswith("wall time:") for line in table[1:]), table
    assert "d=" not in captured.out and "no difficulty given" in captured.out
    assert "d=" not in (out / "report.md").read_text()

    # the wall time is the command's, not the stages' alone
    wall = re.search(r"^wall time: ([\d.]+) s = start-up ([\d.]+) s .* \+ stages ([\d.]+) s", captured.out, re.MULTILINE)
    assert wall, captured.out
    assert abs(float(wall.group(1)) - measured) < 0.5 + 0.05 * measured, (wall.group(0), measured)
    assert float(wall.group(3)) < float(wall.group(1))

    log = (out / "logs" / "run.log").read_text()
    assert "varreason.training: initial step 6/6: {'loss'" in log and "'train_runtime'" in log
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d --- ", log)  # the command, then timestamped records
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO varreason.training", log, re.MULTILINE)


def test_a_resumed_training_says_so(tmp_path, capfd, monkeypatch):
    """A training stage killed after its checkpoint of step 3: the rerun says where it resumed, and transformers' note
    on the tied lm_head ("missing keys") stays in the log file."""
    from varreason import training

    out = tmp_path / "run"
    flags = ["run", "--config", "smoke", "--output-dir", str(out), "--until", "initial"]
    on_step_end = training.ProgressLog.on_step_end

    def killed_at_step_4(self, args, state, control, **kwargs):
        on_step_end(self, args, state, control, **kwargs)
        if self.label == "initial" and state.global_step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.ProgressLog, "on_step_end", killed_at_step_4)
    assert main(flags) == 130
    assert list((out / "models" / "initial.work").glob("checkpoint-3"))
    monkeypatch.undo()
    capfd.readouterr()
    assert main(flags) == 0
    captured = capfd.readouterr()
    err = captured.err.split("\n")
    assert "  initial: resumed from checkpoint-3 (step 3 of 6)" in err
    assert [m.group(2) for m in map(TRAINING_LINE.match, err) if m] == ["4", "6"]
    for chatter in LIBRARY_CHATTER:
        assert chatter not in captured.out + captured.err, chatter
    assert "wall time:" in captured.out  # said without a results table too (--until initial: no eval yet)


def test_library_logs_go_to_the_file_and_ours_to_the_terminal(tmp_path, capfd):
    import warnings

    from varreason.logs import run_log

    root = logging.getLogger()
    terminal = logging.StreamHandler()  # as cli.main's logging.basicConfig
    root.addHandler(terminal)
    level = root.level
    root.setLevel(logging.WARNING)
    chatty = logging.getLogger("somelib")
    own = logging.StreamHandler()  # a library that prints by itself (transformers, vLLM, datasets do)
    chatty.addHandler(own)
    chatty.propagate = False
    try:
        with run_log(tmp_path) as path:
            chatty.warning("library warning")
            logging.getLogger("somelib.sub").info("library info")
            logging.getLogger("varreason.stage").warning("our warning")
            logging.getLogger("otherlib").error("library error")
            warnings.warn("a library's UserWarning", stacklevel=1)
        chatty.warning("after the run")
        assert chatty.handlers == [own] and not chatty.propagate  # restored
    finally:
        root.removeHandler(terminal)
        root.setLevel(level)
        chatty.removeHandler(own)
    err = capfd.readouterr().err
    assert "our warning" in err and "library error" in err and "after the run" in err
    assert "library warning" not in err and "library info" not in err and "UserWarning" not in err
    log = path.read_text()
    for line in ("somelib: library warning", "somelib.sub: library info", "varreason.stage: our warning",
                 "UserWarning: a library's UserWarning"):
        assert line in log, line


def test_difficulty_columns():
    """The run's table, its report and compare's table share one rule: no column when no problem has a difficulty
    (0 = not given); a mixed level 0 shows as "no d"; numeric order."""
    from varreason.report.run_report import difficulty_label, difficulty_levels

    def summary(*levels):
        return {"m": {"by_difficulty": {d: {} for d in levels}}}

    assert difficulty_levels(summary("0")) == []
    assert difficulty_levels(summary("2", "10", "1")) == ["1", "2", "10"]
    levels = difficulty_levels(summary("0", "1"))  # some problems with a difficulty, some without
    assert [difficulty_label(d) for d in levels] == ["no d", "d=1"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (the vllm extra)")
def test_vllm_engine_output_goes_to_the_run_log(tmp_path, capfd):
    """vLLM's logger prints to stdout by itself and its engine processes print what they like (INFO lines, C++
    warnings, a weights bar): all of it lands in run.log, none in the terminal. (25-35 s here: one engine start.)"""
    out = tmp_path / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--backend", "vllm", "--model.head_dim", "32",
                 "--vllm.kv_cache_gib", "0.5", "--until", "sample"]) == 0
    captured = capfd.readouterr()
    terminal = captured.out + captured.err
    for chatter in ("vllm", "EngineCore", "INFO", "WARNING", "Triton", "Loading safetensors"):
        assert chatter not in terminal, chatter
    assert len(_stage_blocks(captured.err.split("\n"))["sample"]) <= 2
    log = (out / "logs" / "run.log").read_text()
    # what reached the log depends on what this process did before (vLLM configures its loggers once per process)
    assert any(line in log for line in ("EngineCore", "vllm", "Loading safetensors")), log[-2000:]
