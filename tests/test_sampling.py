"""The one sampling path (`backends.sampling`): generation -> cut -> verdict, in chunks seeded by their index, with a
scripted generator so every expected value is written out by hand."""

from varreason.backends.base import Generation
from varreason.backends.sampling import check_problem, sample_verified
from varreason.config import FormatConfig
from varreason.tasks.base import Problem
from varreason.templates import Templates


class Scripted:
    """Returns the given texts in order, n per prompt; records the arguments it was called with."""

    def __init__(self, texts):
        self.texts, self.kwargs = list(texts), None

    def generate(self, prompts, **kwargs):
        self.kwargs = kwargs
        n = kwargs["n"]
        return [[Generation(self.texts.pop(0), [7], True, "stop") for _ in range(n)] for _ in prompts]


def problem(total: int) -> Problem:
    return Problem(id="q", question="5+7", answer=str(total), trace="", task="user", difficulty=1,
                   meta={"answer_kind": "integer"})


def test_cut_and_verdict_per_completion_and_stop_strings_passed():
    t = Templates(FormatConfig())
    p = problem(12)
    gen = Scripted(["5+7=12</think><answer>12</answer>", "5+7=13</think><answer>13</answer>", "no markers at all"])
    out = sample_verified(gen, t, ["q1", "q2", "q3"], [p, p, p], n=1, max_new_tokens=9, temperature=0.5, top_p=0.9,
                          seed=3)
    assert gen.kwargs == {"n": 1, "max_new_tokens": 9, "temperature": 0.5, "top_p": 0.9, "stop": ["</answer>"],
                          "seed": 3, "progress": False}
    (right,), (wrong,), (none,) = out
    assert (right.cut.trace, right.predicted, right.correct) == ("5+7=12", "12", True)
    assert (wrong.predicted, wrong.correct) == ("13", False)
    assert (none.predicted, none.correct, none.reason, none.cut.format_ok) == (None, False, "no answer", False)


def test_prefix_is_cut_with_the_completion_and_a_custom_check_is_used():
    t = Templates(FormatConfig())
    gen = Scripted(["<answer>4</answer>", "<answer>5</answer>"])
    seen = []

    def check(target, cut, text):
        seen.append((target, cut.trace, cut.answer, text))
        return cut.answer, cut.answer == target, "compared"

    out = sample_verified(gen, t, ["p"], ["4"], n=2, max_new_tokens=4, temperature=1.0, top_p=1.0, seed=0,
                          check=check, prefixes=["2+2=4</think>"])
    assert [v.correct for v in out[0]] == [True, False]
    assert seen == [("4", "2+2=4", "4", "<answer>4</answer>"), ("4", "2+2=4", "5", "<answer>5</answer>")]
    assert check_problem(problem(4), out[0][0].cut, "")[1] is True


class Echo:
    """Answers every prompt with its own text as the answer; records each call's prompts and seed."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, **kwargs):
        self.calls.append((prompts, kwargs["seed"]))
        return [[Generation(f"<answer>{p}</answer>", [7], True, "stop")] * kwargs["n"] for p in prompts]


def test_sampling_work_seeds_each_chunk_by_its_index_and_the_merge_removes_the_shards(tmp_path):
    """Chunks [a, b], [c] of a run folder: chunk c seeded with stable_seed(tag, seed, c), the prefix sent after the
    prompt, one row per completion merged into the artifact, the shards gone (kept with keep_shards)."""
    import pyarrow.parquet as pq

    from varreason.backends.sampling import sampling_work
    from varreason.config import EvalConfig
    from varreason.runs import RunDir, stable_seed

    def row(item, i, v):
        return {"item": item, "i": i, "answer": v.predicted}

    gen = Echo()
    work = sampling_work(gen, Templates(FormatConfig()), lambda item: item.upper(), row, n=2, settings=EvalConfig(),
                         tag="test", seed=5, prefix_of=lambda item: "+",
                         check=lambda target, cut, text: (cut.answer, False, ""))
    run = RunDir(tmp_path)
    with run.running("key"):
        rows = run.sharded("out", ["a", "b", "c"], 2, work, artifact="out/rows.parquet")
        assert not list((tmp_path / "out").glob(".shards-*"))
        run.sharded("kept", ["a"], 2, work, artifact="kept/rows.parquet", keep_shards=True)
        assert len(list((tmp_path / "kept").glob(".shards-key/part-*.parquet"))) == 1
    assert gen.calls[:2] == [(["A+", "B+"], stable_seed("test", 5, 0)), (["C+"], stable_seed("test", 5, 1))]
    assert [(r["item"], r["i"], r["answer"]) for r in rows] == [("a", 0, "A+"), ("a", 1, "A+"), ("b", 0, "B+"),
                                                                 ("b", 1, "B+"), ("c", 0, "C+"), ("c", 1, "C+")]
    assert pq.read_table(tmp_path / "out/rows.parquet").to_pylist() == rows
