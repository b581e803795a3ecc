"""Any reasoning-gym dataset as a task: `get_task("gym:<name>", levels={1: {...config}, 2: {...}})`.

reasoning-gym writes the questions and answers and scores them (`score_answer`, wrapped by `verify.guarded`, so an
exception or a partial score is a wrong answer). It writes no thinking traces, so these problems have an empty
trace and style "none" unless a `teacher(entry) -> str` is given: use them for evaluation and the RL baselines
(which need no traces), or give a teacher for SFT. `levels` maps each difficulty to the dataset's config fields
(default: one level, 1, with the dataset's defaults). The canonical form of a question is its text.

The entry (question, answer, metadata) is kept in `problem.meta["gym_entry"]` as JSON, with the level's config in
`meta["gym_config"]`, so a problem read back from Parquet is still scored by its dataset.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator

from varreason.errors import InputError
from varreason.eval.verify import Verdict, guarded
from varreason.tasks.base import Problem, ProceduralTask

CHUNK = 100_000  # items per reasoning-gym dataset instance; the stream moves to a new seed after each chunk


@functools.lru_cache(maxsize=64)
def _dataset(name: str, config_json: str, seed: int = 0, size: int = 1):
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **json.loads(config_json))


class GymTask(ProceduralTask):
    def __init__(self, dataset: str, levels: dict[int, dict] | None = None,
                 teacher: Callable[[dict], str] | None = None):
        import reasoning_gym

        if dataset not in reasoning_gym.factory.DATASETS:
            raise InputError(f"unknown reasoning-gym dataset '{dataset}'", field="task")
        self.dataset, self.name, self.teacher = dataset, f"gym:{dataset}", teacher
        self.levels = {int(k): dict(v) for k, v in (levels or {1: {}}).items()}

    def _config_json(self, difficulty: int) -> str:
        return json.dumps(self.levels[difficulty], sort_keys=True)

    def candidates(self, seed: int, difficulty: int) -> Iterator[tuple[str, dict]]:
        self.check_difficulty(difficulty)
        chunk = 0
        while True:
            chunk_seed = int(hashlib.sha256(f"{seed}:{self.name}:{difficulty}:{chunk}".encode()).hexdigest()[:8], 16)
            try:
                ds = _dataset(self.dataset, self._config_json(difficulty), chunk_seed, CHUNK)
            except Exception as exc:  # noqa: BLE001 - a bad config is the user's input
                raise InputError(f"reasoning-gym '{self.dataset}' rejects config {self.levels[difficulty]}: "
                                 f"{type(exc).__name__}: {exc}", field="levels") from None
            for i in range(CHUNK):
                entry = ds[i]
                yield f"{self.name}:{entry['question']}", entry
            chunk += 1

    def build(self, entry: dict, difficulty: int, seed: int) -> Problem:
        trace = self.teacher(entry) if self.teacher else ""
        digest = hashlib.sha1(f"{self.name}:{entry['question']}".encode()).hexdigest()[:10]
        return Problem(
            id=f"{self.name}-{difficulty}-{digest}", question=entry["question"], answer=str(entry["answer"]),
            trace=trace, task=self.name, difficulty=difficulty, style="given" if self.teacher else "none",
            meta={"gym_entry": json.dumps(entry, default=str), "gym_config": self._config_json(difficulty)},
        )

    def check(self, problem: Problem, predicted_answer: object) -> Verdict:
        def score(pred):
            meta = problem.meta or {}
            entry = json.loads(meta["gym_entry"]) if "gym_entry" in meta else {"answer": problem.answer}
            return _dataset(self.dataset, meta.get("gym_config") or "{}").score_answer(pred, entry)

        return guarded(score)(predicted_answer)
