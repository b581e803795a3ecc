"""`varreason eval --model DIR --benchmark NAME_OR_FILE --n N --output-dir DIR`: batched and resumable.

Problems are evaluated in chunks (`RunDir.sharded`); each finished chunk is one Parquet shard written atomically,
so a killed evaluation continues where it stopped, and the chunks can be split across a torchrun group or separate
`--shard i/n` jobs. The settings of an evaluation are pinned in `eval_config.json`: a rerun with other settings in
the same folder is refused rather than mixed with the old samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from varreason.config import EvalConfig, FormatConfig, VLLMConfig
from varreason.errors import InputError
from varreason.eval.benchmarks import (
    BenchItem,
    BenchmarkSpec,
    check_request,
    load_benchmark,
    reads_data,
    render_question,
    score_sample,
)
from varreason.runs import Ranks, RunDir, ShardFinished, library_versions


def _settings(model: str, spec: BenchmarkSpec, items: list[BenchItem], n: int, e: EvalConfig, seed: int,
              max_tokens: int, fmt: FormatConfig, backend: str = "hf", vllm=None) -> dict:
    ids = hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()[:16]
    settings = {"model": str(model), "benchmark": spec.name, "answer_type": spec.answer_type, "n": n,
                "problems": len(items), "problem_ids_sha": ids, "temperature": e.temperature, "top_p": e.top_p,
                "max_completion_length": max_tokens, "seed": seed, "prompt_template": spec.prompt_template,
                "format": dataclasses.asdict(fmt)}
    if backend != "hf":  # hf: no key, as in the evaluations of older versions
        settings["backend"] = {backend: (vllm or VLLMConfig()).output_settings()}
    return settings


def at_least_one(text: str) -> int:
    """argparse type of --num-samples, --limit and --chunk-size: refused while the command line is read."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def check_counts(n: int | None, limit: int | None, chunk_size: int | None) -> None:
    """Samples per problem, the problem limit and the chunk size are whole numbers >= 1 (None: the default); a 0
    or a negative number would otherwise mean one sample, every problem, or all but the last ones."""
    for flag, value in (("--num-samples", n), ("--limit", limit), ("--chunk-size", chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{flag} must be an integer >= 1, got {value!r}")


def evaluate_benchmark(model_dir: str, benchmark: str, out_dir: str | Path, n: int | None = None,
                       e: EvalConfig | None = None, fmt: FormatConfig | None = None, seed: int = 0,
                       data: str | None = None, limit: int | None = None, chunk_size: int = 64,
                       force: bool = False, generator=None, ranks: Ranks | None = None, backend: str = "hf",
                       vllm: VLLMConfig | None = None, prompt_template: str | None = None,
                       overwrite: bool = False) -> dict:
    """Evaluate one model on one benchmark (on `generator`, else an engine of `backend` started for it); returns
    the results dict also written to `results.json`. `prompt_template` replaces the spec's (`describe_specs`)."""
    from varreason.backends.sampling import sampling_work
    from varreason.eval.metrics import benchmark_metrics
    from varreason.templates import Templates

    e = e or EvalConfig()
    fmt = fmt or FormatConfig()
    check_counts(n, limit, chunk_size)
    spec, items = load_benchmark(benchmark, data=data, limit=limit, seed=seed, prompt_template=prompt_template)
    if not items:
        raise InputError("no problems to evaluate", field="benchmark")
    n = n or spec.default_n or e.num_generations  # a local file: the config's, as the run's eval
    max_tokens = min(e.max_completion_length, spec.max_completion_length)
    run = RunDir(out_dir, ranks)
    if n > 1 and e.temperature == 0 and run.ranks.main:
        print(f"varreason: {spec.name}: {n} samples per problem at temperature 0 are {n} copies of the greedy one "
              "(avg@n = greedy accuracy, pass@k flat); --eval.temperature 0.7 samples", file=sys.stderr)
    with run.lock(), contextlib.ExitStack() as stack:
        settings = _settings(model_dir, spec, items, n, e, seed, max_tokens, fmt, backend, vllm)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        pinned = run.read_json("eval_config.json")
        if pinned is not None and pinned != settings:
            if not overwrite:  # --force redoes an evaluation of the same settings; --overwrite replaces other ones
                changed = sorted(k for k in settings.keys() | pinned.keys() if settings.get(k) != pinned.get(k))
                raise InputError(f"holds an evaluation with other settings ({', '.join(changed)}); use another "
                                 "--output-dir or --overwrite to replace it", file=str(run.path))
            # the old settings' shards are never read (another key); the merge of the new ones removes them
        elif pinned is not None and (run.path / "results.json").exists() and not force:
            return run.read_json("results.json")  # done with these settings
        if not run.ranks.shard_job:  # shard jobs of one evaluation may start together; the merge pins it
            run.write_json("eval_config.json", settings)

        if generator is None:
            from varreason.backends import open_engine

            generator = stack.enter_context(open_engine(backend, model_dir, batch_size=e.batch_size, vllm=vllm,
                                                        seed=seed))
        templates = Templates(fmt, generator.tokenizer)
        start, done_now = time.time(), {"problems": 0, "chunks": 0, "tokens": 0}

        def check(item: BenchItem, cut, text: str) -> tuple[object, bool, str]:
            predicted, verdict = score_sample(spec, item, text, cut.answer)
            return predicted, bool(verdict.correct), verdict.reason

        def row(item: BenchItem, k: int, v) -> dict:
            return {"problem_id": item.id, "k": k, "difficulty": item.difficulty, "text": v.generation.text,
                    "predicted": None if v.predicted is None else str(v.predicted), "correct": v.correct,
                    "reason": v.reason, "format_ok": v.cut.format_ok, "finished": v.generation.finished,
                    "completion_tokens": len(v.generation.token_ids)}

        sample = sampling_work(generator, templates, lambda it: templates.prompt(render_question(spec, it)), row,
                               n=n, settings=dataclasses.replace(e, max_completion_length=max_tokens), tag="eval",
                               seed=seed, check=check)

        def work(chunk: list[BenchItem], c: int) -> list[dict]:
            records = sample(chunk, c)
            done_now["tokens"] += sum(r["completion_tokens"] for r in records)
            done_now["problems"] += len(chunk)
            done_now["chunks"] += 1
            return records

        with run.running(key):
            records = run.sharded("", items, chunk_size, work, artifact="samples.parquet", desc=f"eval {spec.name}")
        chunks = -(-len(items) // chunk_size)
        resumed, evaluated, generated = chunks - done_now["chunks"], done_now["problems"], done_now["tokens"]
        wall = time.time() - start
        metrics = benchmark_metrics(records)
        results = {"model": str(model_dir), "benchmark": spec.name, "answer_type": spec.answer_type,
                   "prompt_template": spec.prompt_template, "format": dataclasses.asdict(fmt),
                   "prompt_example": templates.prompt(render_question(spec, items[0])),
                   "sampling": {"n": n, "temperature": e.temperature, "top_p": e.top_p,
                                "max_completion_length": max_tokens, "seed": seed, "batch_size": e.batch_size},
                   "metrics": metrics, "wall_seconds": wall, "resumed_chunks": resumed,
                   "problems_evaluated_now": evaluated, "problems_per_second": evaluated / wall if evaluated else None,
                   "generated_tokens": generated, "versions": library_versions()}
        run.write_json("results.json", results)
        if run.ranks.main:
            _plot_pass_at_k(metrics, run.path / "pass_at_k.png", spec.name)
        return results


def _plot_pass_at_k(metrics: dict, path: Path, title: str) -> None:
    curve = metrics.get("pass@k") or {}
    if len(curve) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(k) for k in curve)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, [curve[k] if k in curve else curve[str(k)] for k in ks], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (unbiased)")
    ax.set_title(f"pass@k: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_many(model_dir: str, benchmarks: list[str], out_dir: str | Path, **kwargs) -> dict:
    """Several benchmarks, one folder each, on one engine (started when a benchmark needs it), plus `summary.json`
    and a table shaped like the paper's."""
    from varreason.backends import open_engine
    from varreason.eval.metrics import macro_average
    from varreason.logs import log_name, run_log

    check_request(benchmarks, kwargs.get("data"), kwargs.get("prompt_template"))  # before a model loads
    check_counts(kwargs.get("n"), kwargs.get("limit"), kwargs.get("chunk_size", 64))
    ranks = kwargs.get("ranks")
    run = RunDir(out_dir, ranks)
    e = kwargs.get("e") or EvalConfig()
    library_log = log_name(run.ranks.index, run.ranks.count, run.ranks.group)  # <out_dir>/logs/run.log
    with run.lock(), run_log(run.path, library_log), open_engine(
            kwargs.get("backend", "hf"), model_dir, batch_size=e.batch_size, vllm=kwargs.get("vllm"),
            seed=kwargs.get("seed", 0)) as engine:
        kwargs.setdefault("generator", engine)
        summary, unfinished = {}, []
        for name in benchmarks:
            sub = Path(name).stem if name.endswith((".jsonl", ".json", ".parquet")) else name
            try:
                res = evaluate_benchmark(model_dir, name, run.path / sub,
                                         **{**kwargs, "data": kwargs.get("data") if reads_data(name) else None})
            except ShardFinished as done:  # a --shard job: on to its part of the next benchmark
                print(f"{name}: {done}", flush=True)
                unfinished.append(name)
                continue
            m = res["metrics"]
            summary[res["benchmark"]] = {"avg@n": m["avg@n"], "ci": m["avg@n_ci"], "n": res["sampling"]["n"],
                                         "problems": m["n_problems"], "pass@k": m["pass@k"],
                                         "problems_per_second": res["problems_per_second"]}
        if unfinished:
            print("this shard is done; the same command without --shard merges the shards", flush=True)
            return {"model": str(model_dir), "unfinished": unfinished}
        out = {"model": str(model_dir), "benchmarks": summary,
               "macro_average": macro_average({k: v["avg@n"] for k, v in summary.items()})}
        run.write_json("summary.json", out)
        if run.ranks.main:
            print_table(out)
        return out


def print_table(summary: dict) -> None:
    names = list(summary["benchmarks"])
    table = Table()
    table.add_column("model")
    for name in names:
        b = summary["benchmarks"][name]
        table.add_column(f"{name}\n(n={b['n']}, {b['problems']} pb)", justify="right")
    table.add_column("avg", justify="right")
    cells = [f"{100 * summary['benchmarks'][n]['avg@n']:.1f}" for n in names]
    table.add_row(Path(summary["model"]).name, *cells, f"{100 * summary['macro_average']:.1f}")
    out = Console()
    out.print(f"avg@n (%): {summary['model']}", highlight=False, soft_wrap=True)  # a title would wrap a long path
    out.print(table)
