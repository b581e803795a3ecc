"""`varreason eval --model DIR --benchmark NAME_OR_FILE --n N --output-dir DIR`: batched and resumable.

Problems are evaluated in chunks; each finished chunk is one Parquet shard written atomically, so a killed
evaluation continues where it stopped. The settings of an evaluation are pinned in `eval_config.json`: a rerun
with other settings in the same folder is refused rather than mixed with the old samples.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from varreason.config import EvalConfig, FormatConfig
from varreason.errors import InputError
from varreason.eval.benchmarks import BenchItem, BenchmarkSpec, load_benchmark, render_question, score_sample
from varreason.runs import RunDir, library_versions


def _settings(model: str, spec: BenchmarkSpec, items: list[BenchItem], n: int, e: EvalConfig, seed: int,
              max_tokens: int) -> dict:
    ids = hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()[:16]
    return {"model": str(model), "benchmark": spec.name, "answer_type": spec.answer_type, "n": n,
            "problems": len(items), "problem_ids_sha": ids, "temperature": e.temperature, "top_p": e.top_p,
            "max_completion_length": max_tokens, "seed": seed}


def evaluate_benchmark(model_dir: str, benchmark: str, out_dir: str | Path, n: int | None = None,
                       e: EvalConfig | None = None, fmt: FormatConfig | None = None, seed: int = 0,
                       data: str | None = None, limit: int | None = None, chunk_size: int = 64,
                       force: bool = False, generator=None) -> dict:
    """Evaluate one model on one benchmark; returns the results dict also written to `results.json`."""
    from varreason.eval.metrics import benchmark_metrics
    from varreason.templates import Templates

    e = e or EvalConfig()
    fmt = fmt or FormatConfig()
    spec, items = load_benchmark(benchmark, data=data, limit=limit, seed=seed)
    if not items:
        raise InputError("no problems to evaluate", field="benchmark")
    n = n or spec.default_n
    max_tokens = min(e.max_completion_length, spec.max_completion_length)
    run = RunDir(out_dir)
    with run.lock():
        settings = _settings(model_dir, spec, items, n, e, seed, max_tokens)
        pinned = run.path / "eval_config.json"
        if pinned.exists() and json.loads(pinned.read_text()) != settings:
            if not force:
                raise InputError("holds an evaluation with other settings; use another --output-dir or --force",
                                 file=str(run.path))
            shutil.rmtree(run.path / "shards", ignore_errors=True)
        run.write_json("eval_config.json", settings)

        if generator is None:
            from varreason.backends.hf import HFGenerator
            from varreason.models import load_model, load_tokenizer

            tokenizer = load_tokenizer(model_dir)
            generator = HFGenerator(load_model(model_dir), tokenizer, batch_size=e.batch_size)
        templates = Templates(fmt, generator.tokenizer)
        chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
        start, generated, resumed, evaluated = time.time(), 0, 0, 0
        for c, chunk in enumerate(tqdm(chunks, desc=f"eval {spec.name}", unit="chunk")):
            shard = f"shards/{c:05d}.parquet"
            if (run.path / shard).exists():
                resumed += 1
                continue
            prompts = [templates.prompt(render_question(spec, it)) for it in chunk]
            outputs = generator.generate(prompts, n=n, max_new_tokens=max_tokens, temperature=e.temperature,
                                         top_p=e.top_p, stop=templates.stop_strings(), seed=seed * 100_003 + c,
                                         progress=False)
            records = []
            for item, samples in zip(chunk, outputs):
                for k, g in enumerate(samples):
                    cut = templates.cut(g.text)
                    section = cut.answer if cut.format_ok or cut.answer is not None else None
                    predicted, verdict = score_sample(spec, item, g.text, section)
                    records.append({"problem_id": item.id, "k": k, "difficulty": item.difficulty, "text": g.text,
                                    "predicted": None if predicted is None else str(predicted),
                                    "correct": bool(verdict.correct), "reason": verdict.reason,
                                    "format_ok": cut.format_ok, "finished": g.finished,
                                    "completion_tokens": len(g.token_ids)})
                    generated += len(g.token_ids)
            run.write_rows(shard, records)
            evaluated += len(chunk)
        wall = time.time() - start
        records = [r for c in range(len(chunks)) for r in run.read_rows(f"shards/{c:05d}.parquet")]
        run.write_rows("samples.parquet", records)
        metrics = benchmark_metrics(records)
        results = {"model": str(model_dir), "benchmark": spec.name, "answer_type": spec.answer_type,
                   "sampling": {"n": n, "temperature": e.temperature, "top_p": e.top_p,
                                "max_completion_length": max_tokens, "seed": seed, "batch_size": e.batch_size},
                   "metrics": metrics, "wall_seconds": wall, "resumed_chunks": resumed,
                   "problems_evaluated_now": evaluated, "problems_per_second": evaluated / wall if evaluated else None,
                   "generated_tokens": generated, "versions": library_versions()}
        run.write_json("results.json", results)
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
    """Several benchmarks, one folder each, plus `summary.json` and a table shaped like the paper's."""
    from varreason.eval.metrics import macro_average

    run = RunDir(out_dir)
    with run.lock():
        summary = {}
        for name in benchmarks:
            sub = Path(name).stem if name.endswith((".jsonl", ".json", ".parquet")) else name
            res = evaluate_benchmark(model_dir, name, run.path / sub, **kwargs)
            m = res["metrics"]
            summary[res["benchmark"]] = {"avg@n": m["avg@n"], "ci": m["avg@n_ci"], "n": res["sampling"]["n"],
                                         "problems": m["n_problems"], "pass@k": m["pass@k"],
                                         "problems_per_second": res["problems_per_second"]}
        out = {"model": str(model_dir), "benchmarks": summary,
               "macro_average": macro_average({k: v["avg@n"] for k, v in summary.items()})}
        run.write_json("summary.json", out)
        print_table(out)
        return out


def print_table(summary: dict) -> None:
    names = list(summary["benchmarks"])
    table = Table(title=f"avg@n (%) — {summary['model']}")
    table.add_column("model")
    for name in names:
        b = summary["benchmarks"][name]
        table.add_column(f"{name}\n(n={b['n']}, {b['problems']} pb)", justify="right")
    table.add_column("avg", justify="right")
    cells = [f"{100 * summary['benchmarks'][n]['avg@n']:.1f}" for n in names]
    table.add_row(Path(summary["model"]).name, *cells, f"{100 * summary['macro_average']:.1f}")
    Console().print(table)
