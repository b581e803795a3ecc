"""The run directory: artifacts written atomically, and a manifest of finished stages.

A stage is skipped when its manifest entry has the same config hash and its outputs exist; anything written
goes to a temporary name first and is renamed into place, so a killed run never leaves a half-written artifact
that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

from varreason.errors import InputError


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("varreason", "torch", "transformers", "datasets", "accelerate", "tokenizers", "math-verify",
                 "reasoning-gym"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.path / "manifest.json"
        self.shard_key: str | None = None  # the running stage's config hash: keys its resumable shards

    @contextlib.contextmanager
    def running(self, config_hash: str):
        """Mark a stage as running under `config_hash`, which keys its resumable shards."""
        self.shard_key = config_hash
        try:
            yield self
        finally:
            self.shard_key = None

    # --- one writer at a time ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's write lock while a command writes to it; a second writer is refused with one line.

        `fcntl.flock` on `.lock`: the kernel drops the lock when its holder exits or is killed, so a lock left by a
        killed run never blocks. The file keeps the holder's pid, host, command and start time for the message.
        """
        import fcntl

        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                raise InputError(f"in use by {holder}; wait for it to finish or stop it", file=str(self.path)) from None
            info = (f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(['varreason', *sys.argv[1:]])[:300]}, "
                    f"since {time.strftime('%Y-%m-%d %H:%M:%S')})")
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            yield self
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # --- manifest ----------------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text())

    def is_done(self, stage: str, config_hash: str, outputs: list[str]) -> bool:
        entry = self.manifest()["stages"].get(stage)
        return bool(entry and entry.get("config_hash") == config_hash
                    and all((self.path / o).exists() for o in outputs))

    def record(self, stage: str, config_hash: str, outputs: list[str], inputs: list[str], counts: dict,
               wall_seconds: float) -> None:
        manifest = self.manifest()
        manifest["stages"][stage] = {
            "config_hash": config_hash, "inputs": inputs, "outputs": outputs, "counts": counts,
            "wall_seconds": round(wall_seconds, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": library_versions(),
        }
        self.write_json("manifest.json", manifest)

    # --- atomic artifact I/O -------------------------------------------------------------------------------------
    def _tmp(self, rel: str) -> tuple[Path, Path]:
        final = self.path / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        return final, final.with_name(f".{final.name}.tmp{os.getpid()}")

    @contextlib.contextmanager
    def _atomic(self, rel: str):
        """Yield a temporary path next to `rel`; rename it into place on success, remove it on any failure (a full
        disk, a kill signal turned into an exception), so no partial artifact is ever left behind."""
        final, tmp = self._tmp(rel)
        try:
            yield tmp
            os.replace(tmp, final)
        except OSError as exc:  # name the artifact, not its temporary file
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(final)) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_json(self, rel: str, obj) -> Path:
        with self._atomic(rel) as tmp:
            tmp.write_text(json.dumps(obj, indent=2, default=str))
        return self.path / rel

    def write_text(self, rel: str, text: str) -> Path:
        with self._atomic(rel) as tmp:
            tmp.write_text(text)
        return self.path / rel

    def write_rows(self, rel: str, rows: list[dict]) -> Path:
        """A list of records as Parquet (opens with `datasets.load_dataset('parquet', ...)` or pandas)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
        with self._atomic(rel) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        return self.path / rel

    def read_rows(self, rel: str) -> list[dict]:
        import pyarrow.parquet as pq

        return pq.read_table(self.path / rel).to_pylist()

    # --- resumable work in shards ------------------------------------------------------------------------------
    def sharded(self, rel_dir: str, items: list, chunk_size: int, work, desc: str = "") -> list[dict]:
        """Rows of `work(chunk, chunk_index)` over `items` in chunks, each chunk saved as one Parquet shard.

        A killed stage resumes from its finished shards: a shard is reused when it exists under the config hash
        of the running stage (`running`), so shards of another config are never mixed in. `work` must be
        deterministic given (chunk, chunk_index), e.g. seeded from the index. The shard folder is removed by
        the caller once the merged artifact is written (`drop_shards`).
        """
        from tqdm.auto import tqdm

        if self.shard_key is None:
            raise RuntimeError("RunDir.sharded runs inside `with run.running(config_hash)` (pipeline.run_stage)")
        folder = f"{rel_dir}/.shards-{self.shard_key}"
        chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
        rows: list[dict] = []
        done = sum((self.path / folder / f"part-{i:05d}.parquet").exists() for i in range(len(chunks)))
        bar = tqdm(total=len(chunks), initial=done, desc=desc or rel_dir, unit="shard")
        for i, chunk in enumerate(chunks):
            rel = f"{folder}/part-{i:05d}.parquet"
            if (self.path / rel).exists():
                rows += self.read_rows(rel)
                continue
            part = work(chunk, i)
            self.write_rows(rel, part)
            rows += part
            bar.update(1)
        bar.close()
        return rows

    def drop_shards(self, rel_dir: str) -> None:
        import shutil

        for folder in (self.path / rel_dir).glob(".shards-*"):
            shutil.rmtree(folder, ignore_errors=True)
