"""The run directory: artifacts written atomically, a manifest of finished stages, and who writes what when several
processes share it.

A stage is skipped when its manifest entry has the same config hash and its outputs exist; anything written
goes to a temporary name first and is renamed into place, so a killed run never leaves a half-written artifact
that looks finished.

Several processes (`Ranks`): under `torchrun` / `accelerate launch` the processes are one torch.distributed group;
`sharded` work is split across them by chunk, every rank writes its own chunks, and only rank 0 writes anything
else (as the HF Trainer saves only on the main process). Separate jobs (`--shard i/n`) each do every n-th chunk and
stop (`ShardFinished`); the same command without `--shard` merges the finished chunks and does any that are missing.
Chunks are seeded from their index (`stable_seed`), so the merged artifact is the same whatever the number of
processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from varreason import compute
from varreason.errors import InputError


@dataclass(frozen=True)
class Ranks:
    """This process's share of the work: chunk `i` of sharded work is done by the process with `index == i % count`.

    group: the processes are one torch.distributed group (torchrun / accelerate launch): they wait for each other
    and every rank gets the merged rows. Otherwise `count > 1` means separate shard jobs (`--shard index/count`).
    """

    index: int = 0
    count: int = 1
    group: bool = False

    @property
    def main(self) -> bool:
        """May write the run's artifacts: one process, rank 0 of a group, or a shard job (which stops with
        `ShardFinished` before it would write anything but its own chunks)."""
        return self.index == 0 or not self.group

    @property
    def shard_job(self) -> bool:
        return self.count > 1 and not self.group

    def wait(self) -> None:
        """Barrier across the group (nothing for one process or a shard job)."""
        if self.group:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def __str__(self) -> str:
        if self.count == 1:
            return "one process"
        return f"rank {self.index} of {self.count}" if self.group else f"shard {self.index}/{self.count}"


def group_timeout() -> int:
    """Seconds a rank of a group waits at a barrier or collective before the group fails (VARREASON_GROUP_TIMEOUT,
    default 4 h). Ranks wait for the slowest one at the end of every sharded stage (uneven chunks: one chunk of long
    traces can take an hour on a GPU) and while rank 0 alone writes a model, so torch's defaults (10 min for nccl,
    30 min for gloo) would end healthy runs; a rank that died is noticed after this long."""
    text = os.environ.get("VARREASON_GROUP_TIMEOUT", str(4 * 3600))
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"VARREASON_GROUP_TIMEOUT must be a whole number of seconds >= 1, got '{text}'",
                         field="VARREASON_GROUP_TIMEOUT")
    return int(text)


def process_group() -> Ranks:
    """The torch.distributed group this process was launched in (torchrun / accelerate launch set WORLD_SIZE), set
    up the way the HF Trainer does it (accelerate's PartialState: gloo on CPU, nccl on GPU) with our
    `group_timeout` (the Trainer's `ddp_timeout` only applies to a group it makes itself); one process otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=group_timeout()))
    return Ranks(state.process_index, state.num_processes, group=True)


def parse_shard(text: str) -> Ranks:
    """`--shard i/n` (0 <= i < n): this job's part of the sharded stages."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like i/n (e.g. 0/4), got '{text}'", field="shard") from None
    if not 0 <= index < count:
        raise InputError(f"--shard i/n needs 0 <= i < n, got {index}/{count}", field="shard")
    return Ranks(index, count, group=False)


class ShardFinished(Exception):
    """A shard job did its part of a stage; the merge is for a run without --shard."""

    def __init__(self, what: str, done: int, missing: int):
        super().__init__(f"{what}: {done} chunk(s) of this shard done; {missing} chunk(s) of the stage still missing")
        self.done, self.missing = done, missing


def stable_seed(*parts) -> int:
    """A 31-bit seed from any parts (what is sampled, the config seed, the chunk index): the same in every run and
    process, unlike `hash()`."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


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


def _writer_tag() -> str:
    """Who writes a temporary file: this process's pid and host, so that a process on another machine sharing the
    folder (a shard job, a rank) is never taken for a dead one here."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _alive(tag: str) -> bool:
    """Whether the process that owns a temporary file still runs. Only a process of this host can be asked: one of
    another host, or a tag we cannot read, counts as alive (its file is never deleted)."""
    pid, _, host = tag.partition("@")
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True
    return True


LOGPROBS = "_logps"  # columns of per-token log-probs: float32 lists on disk (both engines compute them in float32)


def _logprobs_as_float32(table):
    """The log-prob columns as lists of float32 (Python floats would make them float64: twice the bytes, no more
    information)."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        t = field.type
        if field.name.endswith(LOGPROBS) and pa.types.is_list(t) and (pa.types.is_floating(t.value_type)
                                                                     or pa.types.is_null(t.value_type)):
            table = table.set_column(i, pa.field(field.name, pa.list_(pa.float32())),
                                     table.column(i).cast(pa.list_(pa.float32())))
    return table


def _numeric_lists(table) -> list[str]:
    import pyarrow as pa

    return [f.name for f in table.schema if pa.types.is_list(f.type)
            and (pa.types.is_floating(f.type.value_type) or pa.types.is_integer(f.type.value_type))]


def _rows(table, array_columns) -> list[dict]:
    """Records of an Arrow table; the `array_columns` as numpy views (None where a value is null)."""
    array_columns = list(array_columns)
    rows = table.drop_columns(array_columns).to_pylist()
    for name in array_columns:
        column = table.column(name).combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False)
        offsets = column.offsets.to_numpy() - column.offsets[0].as_py()
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        for row, start, end, null in zip(rows, offsets[:-1], offsets[1:], nulls):
            row[name] = None if null else values[start:end]
    order = table.column_names
    return [{k: row[k] for k in order} for row in rows] if array_columns else rows


@dataclass(frozen=True)
class Start:
    """A checkpoint a stage starts from other than the folder's own models: round t >= 2 of Algorithm 1 starts from
    round t-1's final model and q (`pipeline.round_folder` records them in the manifest's `starts`)."""
    path: Path
    run_id: str | None


class RunDir:
    def __init__(self, path: str | Path, ranks: Ranks | None = None):
        self.path = Path(path)
        self.ranks = ranks or Ranks()
        if self.ranks.main:
            self.path.mkdir(parents=True, exist_ok=True)
        self.shard_key: str | None = None  # the running stage's config hash: keys its resumable shards
        self.round = 1  # Algorithm 1's round this folder holds (rounds/<t>/ of a run: t; see pipeline.round_folder)

    @contextlib.contextmanager
    def running(self, key: str):
        """Mark work as running under `key` (a stage's config hash, an evaluation's fingerprint), which keys its
        resumable shards; nested use restores the outer key."""
        outer, self.shard_key = self.shard_key, key
        try:
            yield self
        finally:
            self.shard_key = outer

    # --- one writer at a time ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's write lock while a command writes to it; a second writer is refused with one line.

        `fcntl.flock` on `.lock`: the kernel drops the lock when its holder exits or is killed, so a lock left by a
        killed run never blocks. The file keeps the holder's pid, host, command and start time for the message.
        In a process group rank 0 holds it for all ranks; shard jobs share it with each other (each writes only its
        own chunks) but not with a writer of the whole folder.
        """
        import fcntl

        if not self.ranks.main:
            yield self
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.ranks.shard_job else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                raise InputError(f"in use by {holder}; wait for it to finish or stop it", file=str(self.path)) from None
            except OSError as exc:  # ENOSYS / EOPNOTSUPP / ENOLCK: Lustre mounted noflock, some NFS and FUSE mounts
                raise InputError(f"this file system cannot lock files ({exc.strerror or exc}): mount it with flock or "
                                 "localflock, or put the run folder (--output-dir) on one that can",
                                 file=str(self.path)) from None
            info = (f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(['varreason', *sys.argv[1:]])[:300]}, "
                    f"since {time.strftime('%Y-%m-%d %H:%M:%S')})")
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            yield self
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # --- manifest ----------------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        manifest = self.read_json("manifest.json", {"stages": {}})
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
            raise self._damaged("manifest.json", ValueError("no 'stages' mapping"))
        return manifest

    def entry(self, key: str) -> dict | None:
        """A stage's manifest entry (`Stage.key`: the stage's name, with the model name for named models)."""
        return self.manifest()["stages"].get(key)

    @property
    def starts(self) -> dict[str, Start]:
        """The checkpoints this folder's stages start from, by role ("policy": the reasoning model they sample from,
        score under and continue from; "posterior": the q that q continues from); empty in a run's own folder, whose
        stages start from models/initial (pi0) and the config's `init` fields."""
        recorded = self.manifest().get("starts") or {}
        return {role: Start(self.path / s["path"], s.get("run_id")) for role, s in recorded.items()}

    def run_id(self, key: str) -> str | None:
        """Identifies the making of a stage's artifacts: a stage records the ids of what it read (`made_from`)."""
        return (self.entry(key) or {}).get("run_id")

    def is_done(self, key: str, config_hash: str, outputs: list[str], made_from: dict | None = None) -> bool:
        """Done: made with the same settings, its outputs there, and made from the very artifacts it would read now
        (an entry from before `made_from` was recorded counts as made from them)."""
        entry = self.entry(key)
        return bool(entry and entry.get("config_hash") == config_hash
                    and all((self.path / o).exists() for o in outputs)
                    and (made_from is None or entry.get("made_from", made_from) == made_from))

    def record(self, key: str, config_hash: str, outputs: list[str], made_from: dict, counts: dict,
               wall_seconds: float, settings: dict | None = None) -> None:
        """The stage's entry: its settings, what it read (`made_from`: run ids) and a new run id of its own. An entry
        of another key whose artifacts these outputs replaced is dropped: each artifact has one maker."""
        import uuid

        manifest = self.manifest()
        stages = manifest["stages"]
        for other in [k for k, e in stages.items() if k != key and set(e.get("outputs", ())) & set(outputs)]:
            del stages[other]
        stages[key] = {
            "config_hash": config_hash, "run_id": uuid.uuid4().hex[:12], "made_from": made_from, "outputs": outputs,
            "settings": settings or {}, "counts": counts, "wall_seconds": round(wall_seconds, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "processes": self.ranks.count if self.ranks.group else 1, "versions": library_versions(),
        }
        self.write_json("manifest.json", manifest)

    # --- atomic artifact I/O -------------------------------------------------------------------------------------
    def _tmp(self, rel: str) -> tuple[Path, Path]:
        """The artifact's path and a temporary one beside it; temporary files that a killed writer left are removed."""
        final = self.path / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.tmp*"):
            if not _alive(stale.name.rsplit(".tmp", 1)[1]):
                stale.unlink(missing_ok=True)
        return final, final.with_name(f".{final.name}.tmp{_writer_tag()}")

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

    # In a process group only rank 0 writes (the others computed the same rows); see the module docstring.
    def write_json(self, rel: str, obj) -> Path:
        if self.ranks.main:
            with self._atomic(rel) as tmp:
                tmp.write_text(json.dumps(obj, indent=2, default=str))
        return self.path / rel

    def write_text(self, rel: str, text: str) -> Path:
        if self.ranks.main:
            with self._atomic(rel) as tmp:
                tmp.write_text(text)
        return self.path / rel

    def write_rows(self, rel: str, rows: list[dict], every_rank: bool = False, metadata: dict | None = None) -> Path:
        """A list of records as Parquet (opens with `datasets.load_dataset('parquet', ...)` or pandas); `metadata`
        (JSON values) goes into the file's schema metadata under `varreason.<key>` (`read_metadata`)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not (self.ranks.main or every_rank):
            return self.path / rel
        rows = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
        table = _logprobs_as_float32(pa.Table.from_pylist(rows))
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   **{f"varreason.{k}": json.dumps(v) for k, v in metadata.items()}})
        with self._atomic(rel) as tmp:
            pq.write_table(table, tmp)
        return self.path / rel

    def read_metadata(self, rel: str) -> dict:
        """What `write_rows(..., metadata=)` stored with a Parquet file ({} when nothing)."""
        import pyarrow.parquet as pq

        stored = pq.read_schema(self.path / rel).metadata or {}
        return {k.decode()[len("varreason."):]: json.loads(v) for k, v in stored.items()
                if k.decode().startswith("varreason.")}

    def read_rows(self, rel: str, columns: list[str] | None = None, arrays: bool = False) -> list[dict]:
        """The records of a Parquet artifact: all `columns` or the named ones. `arrays`: numeric list columns
        (per-token log-probs, token ids) come as numpy arrays, views into one buffer per column, not Python lists:
        at the paper's size the log-probs of scores.parquet are ~1.6e9 numbers, 6.4 GB as float32 and ~50 GB as
        Python floats."""
        table = self._read_table(rel, columns)
        return _rows(table, _numeric_lists(table) if arrays else ())

    def _read_table(self, rel: str, columns: list[str] | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(self.path / rel, columns=columns)
        except FileNotFoundError:
            raise InputError("not there: run the stage that writes it first (`varreason run` runs every stage in "
                             "order)", file=str(self.path / rel)) from None
        except pa.ArrowException as exc:  # ArrowInvalid, or an ArrowIOError (an OSError with no errno) mid-file
            raise self._damaged(rel, exc) from None

    def read_json(self, rel: str, default=None):
        """A JSON file of the folder, or `default` when it is not there."""
        path = self.path / rel
        if not path.exists():
            return default
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self._damaged(rel, exc) from None

    def _damaged(self, rel: str, exc: Exception) -> InputError:
        """Artifacts are written whole (`_atomic`), so an unreadable one was changed from outside: say which."""
        redo = ("remove it to redo every stage" if rel == "manifest.json"
                else "remove it (or rerun the stage that writes it with --force)")
        return InputError(f"damaged, not readable ({type(exc).__name__}: {str(exc)[:200]}); {redo}",
                          file=str(self.path / rel))

    # --- resumable work in shards ------------------------------------------------------------------------------
    def sharded(self, rel_dir: str, items: list, chunk_size: int, work, *, artifact: str, desc: str = "",
                keep_shards: bool = False) -> list[dict]:
        """Rows of `work(chunk, chunk_index)` over `items` in chunks, each chunk saved as one Parquet shard, merged
        into `artifact`; then every shard folder under `rel_dir` goes. `keep_shards`: they stay until the stage is
        recorded (`drop_finished_shards`), for a stage with long work after the merge that a kill should not make
        sample again.

        A killed stage resumes from its finished shards: a shard is reused when it exists under the key of the
        running work (`running`), so shards of another config are never mixed in. `work` must be deterministic
        given (chunk, chunk_index), e.g. seeded from the index (`stable_seed`): then the rows do not depend on which
        process did which chunk. This process does the chunks `self.ranks` gives it; in a group every rank then reads
        all of them and gets the merged rows; a shard job stops with `ShardFinished`.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq
        from tqdm.auto import tqdm

        if self.shard_key is None:
            raise RuntimeError("RunDir.sharded runs inside `with run.running(key)` (pipeline.run_stage)")
        folder = f"{rel_dir}/.shards-{self.shard_key}" if rel_dir else f".shards-{self.shard_key}"
        chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
        shard = [f"{folder}/part-{i:05d}.parquet" for i in range(len(chunks))]
        mine = [i for i in range(len(chunks)) if i % self.ranks.count == self.ranks.index]
        todo = [i for i in mine if not (self.path / shard[i]).exists()]
        label = (desc or rel_dir) + ("" if self.ranks.count == 1 else f" ({self.ranks})")
        # disable=None: a bar on a terminal only; a captured log gets the stage lines, not `\r`-joined bar updates
        with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=label, unit="shard", disable=None) as bar:
            for i in todo:
                with compute.set_apart() as spent:  # the chunk's compute travels with its shard
                    rows = work(chunks[i], i)
                self.write_rows(shard[i], rows, every_rank=True, metadata={"compute": spent[0].to_dict()})
                bar.update(1)
        if self.ranks.shard_job:
            raise ShardFinished(desc or rel_dir, len(mine), sum(not (self.path / s).exists() for s in shard))
        self.ranks.wait()
        tables = [self._read_table(rel) for rel in shard]
        table = (pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({}))
        table = table.replace_schema_metadata(None)  # the shards' compute accounts are counted below
        rows = _rows(table, [n for n in table.column_names if n.endswith(LOGPROBS)])  # log-probs as arrays
        for rel in shard:  # every chunk's compute, counted once here whoever did it (a rank, a shard job, a killed run)
            compute.add(compute.Account.from_dict(self.read_metadata(rel).get("compute")))
        self.ranks.wait()  # every rank has read the shards before rank 0 may drop them
        if self.ranks.main:
            with self._atomic(artifact) as tmp:
                pq.write_table(table, tmp)
        if not keep_shards:
            self._drop_shards(rel_dir)
        return rows

    def _drop_shards(self, rel_dir: str) -> None:
        """Every shard folder under `rel_dir` (those of other settings too): its work is merged."""
        import shutil

        if not self.ranks.main:
            return
        for folder in (self.path / rel_dir).glob(".shards-*"):
            shutil.rmtree(folder, ignore_errors=True)

    def drop_finished_shards(self, key: str) -> None:
        """Shards of work under `key` once that work is finished. Called where finished work is recognised (a stage
        recorded or skipped, an evaluation stored or reused), so a kill between writing the merged artifact and
        dropping its shards leaves nothing behind for good."""
        import shutil

        if not self.ranks.main or not self.path.exists():
            return
        for folder in self.path.rglob(f".shards-{key}"):
            shutil.rmtree(folder, ignore_errors=True)
