"""Benchmark specs, loading, scoring per answer type, and the resumable `varreason eval --model` runner."""

import json

import pyarrow.parquet as pq
import pytest

from varreason.backends.base import Generation
from varreason.config import EvalConfig
from varreason.errors import InputError
from varreason.eval.benchmarks import SPECS, load_benchmark
from varreason.eval.evaluator import evaluate_benchmark, evaluate_many
from varreason.runs import ShardFinished


class CannedGenerator:
    """A Generator that answers every prompt with fixed texts (to test scoring paths without a model)."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.calls = tokenizer, answers, 0

    def generate(self, prompts, n=1, max_new_tokens=256, temperature=0.7, top_p=1.0, stop=None, seed=0,
                 progress=True, desc=""):
        self.calls += 1
        return [[Generation(self.answers(p, k), [1, 2, 3], True, "eos") for k in range(n)] for p in prompts]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_paper_specs_are_declared():
    for name in ("math500", "aime24", "aime25", "amc23", "olympiadbench", "gpqa_diamond", "mmlu_pro",
                 "livecodebench_easy", "livecodebench_medium", "livecodebench_hard"):
        assert name in SPECS and SPECS[name].default_n >= 1
    assert SPECS["aime24"].default_n == 32 and SPECS["math500"].default_n == 2


def test_offline_hub_benchmark_is_one_line_error():
    with pytest.raises(InputError, match="--data"):
        load_benchmark("math500")


def test_local_files_of_each_type(tmp_path, tiny_model_dir):
    from varreason.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    math = _write(tmp_path / "m.jsonl", [{"id": "a", "question": "1/2 as decimal?", "answer": "0.5"},
                                         {"id": "b", "question": "2+2?", "answer": "4"}])
    mc = _write(tmp_path / "c.jsonl", [{"id": "q", "question": "Pick", "choices": ["x", "y", "z"], "answer": "y"}])
    code = _write(tmp_path / "k.jsonl", [{"id": "p", "question": "echo doubled",
                                          "tests": [{"input": "3\n", "output": "6\n"}, {"input": "5", "output": "10"}]}])
    gen = CannedGenerator(tok, lambda p, k: {
        0: "x</think><answer>\\boxed{\\frac{1}{2}}</answer>",
        1: "x</think><answer>The answer is (B)</answer>",
        2: "x</think><answer>```python\nprint(2*int(input()))\n```</answer>"}[0 if "decimal" in p or "2+2" in p
                                                                             else 1 if "Pick" in p else 2])
    res_m = evaluate_benchmark("canned", math, tmp_path / "om", n=2, generator=gen)
    res_c = evaluate_benchmark("canned", mc, tmp_path / "oc", n=1, generator=gen)
    res_k = evaluate_benchmark("canned", code, tmp_path / "ok", n=1, generator=gen)
    assert res_m["metrics"]["avg@n"] == pytest.approx(0.5)  # 1/2 right, 4 wrong
    assert res_c["metrics"]["avg@n"] == 1.0 and res_k["metrics"]["avg@n"] == 1.0
    samples = pq.read_table(tmp_path / "om" / "samples.parquet").to_pylist()
    assert len(samples) == 4 and {s["reason"] for s in samples} == {"correct", "wrong"}


def test_bad_rows_name_file_row_field(tmp_path):
    bad = _write(tmp_path / "b.jsonl", [{"id": "a", "question": "q", "answer": "1"}, {"id": "b", "answer": "2"}])
    with pytest.raises(InputError) as err:
        load_benchmark(bad)
    assert "b.jsonl" in err.value.line() and "row 1" in err.value.line() and "question" in err.value.line()
    mc = _write(tmp_path / "c.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "Z"}])
    with pytest.raises(InputError, match="neither a letter"):
        load_benchmark(mc)


@pytest.mark.slow
def test_builtin_benchmark_is_resumable_and_shardable(tmp_path, tiny_model_dir):
    from varreason.runs import Ranks

    e = EvalConfig(temperature=0.7, max_completion_length=12, batch_size=8)
    out = tmp_path / "ev"
    first = evaluate_many(str(tiny_model_dir), ["arith"], out, n=2, e=e, limit=12, chunk_size=5)
    bench = out / "arith"
    res = json.loads((bench / "results.json").read_text())
    assert res["metrics"]["n_problems"] == 12 and res["sampling"]["n"] == 2 and res["problems_evaluated_now"] == 12
    assert "macro_average" in first and (bench / "pass_at_k.png").exists()
    assert not list(bench.glob(".shards-*"))  # merged, shards removed
    before = pq.read_table(bench / "samples.parquet").to_pylist()
    assert evaluate_benchmark(str(tiny_model_dir), "arith", bench, n=2, e=e, limit=12, chunk_size=5) == res  # done

    # a shard job (chunks 0 and 2 of 3) stops without merging; the run without --shard does chunk 1 and merges
    other = tmp_path / "sharded"
    with pytest.raises(ShardFinished, match="1 chunk"):
        evaluate_benchmark(str(tiny_model_dir), "arith", other, n=2, e=e, limit=12, chunk_size=5,
                           ranks=Ranks(0, 2))
    assert not (other / "samples.parquet").exists() and len(list(other.glob(".shards-*/part-*"))) == 2
    again = evaluate_benchmark(str(tiny_model_dir), "arith", other, n=2, e=e, limit=12, chunk_size=5)
    assert again["resumed_chunks"] == 2 and again["problems_evaluated_now"] == 5
    after = pq.read_table(other / "samples.parquet").to_pylist()
    assert after == before  # same seeds per chunk: the same samples, whoever did which chunk
    with pytest.raises(InputError, match="other settings"):
        evaluate_benchmark(str(tiny_model_dir), "arith", bench, n=3, e=e, limit=12, chunk_size=5)


def test_builtin_benchmark_is_disjoint_from_the_demo_training_split():
    from varreason.tasks import build_splits

    train, _test = build_splits(["sum", "product"], 4000, 500, 0, [1, 2, 3, 4, 5])
    _, items = load_benchmark("arith", limit=100, seed=0)
    questions = {it.question for it in items}
    assert questions.isdisjoint({p.question for p in train}) and len(items) == 100


def test_reasoning_gym_benchmark_offline():
    from varreason.eval.benchmarks import score_sample

    spec, items = load_benchmark("gym_chain_sum", limit=3)
    assert len(items) == 3
    assert score_sample(spec, items[0], "", items[0].answer)[1].correct
    assert not score_sample(spec, items[0], "", "not a number")[1].correct
    assert score_sample(spec, items[0], "", None)[1].reason == "no answer"
