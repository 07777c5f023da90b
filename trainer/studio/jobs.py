"""The training queue: jobs persisted in sqlite, one `covergen-train` subprocess per device at a time.

States: queued -> running -> succeeded | failed | stopped, and running -> stopping -> stopped.
`interrupted` marks a job that was running when the studio stopped; it is resumable from its last
checkpoint, like a stopped or failed one that has a checkpoint. Every final state is reached by
the process ending (or never starting), so a stop cannot hang: SIGTERM to the process group,
SIGKILL after `stop_grace_s`.

Why a subprocess and not a thread: a stop must work while torch is inside a kernel, memory must
come back when a job ends, a crash in training must not take the studio down, and the run must be
exactly what `covergen-train --config job.yaml` does on the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUED, RUNNING, STOPPING = "queued", "running", "stopping"
SUCCEEDED, FAILED, STOPPED, INTERRUPTED = "succeeded", "failed", "stopped", "interrupted"
FINAL = frozenset({SUCCEEDED, FAILED, STOPPED, INTERRUPTED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  dataset TEXT NOT NULL,
  device TEXT NOT NULL,
  state TEXT NOT NULL,
  seq INTEGER NOT NULL,
  resume INTEGER NOT NULL DEFAULT 0,
  pid INTEGER,
  exit_code INTEGER,
  message TEXT NOT NULL DEFAULT '',
  created REAL NOT NULL,
  started REAL,
  finished REAL
)
"""


@dataclass(frozen=True)
class Job:
    """One row of the queue."""

    id: int
    name: str
    dataset: str
    device: str
    state: str
    seq: int
    resume: bool
    pid: int | None
    exit_code: int | None
    message: str
    created: float
    started: float | None
    finished: float | None

    @property
    def final(self) -> bool:
        return self.state in FINAL


class JobStore:
    """The persisted queue (sqlite, one file); every method is one short transaction."""

    def __init__(self, path: Path, runs_dir: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.runs_dir = runs_dir
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def job_dir(self, job_id: int) -> Path:
        return self.runs_dir / f"job-{job_id:05d}"

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
        return int(row[0])

    def add(self, name: str, dataset: str, device: str, make_yaml: Callable[[Path], str]) -> Job:
        """Queue a job; `make_yaml(job_dir)` writes its train.yaml (output_dir inside job_dir)."""
        cursor = self._db.execute(
            "INSERT INTO jobs (name, dataset, device, state, seq, created) VALUES (?, ?, ?, ?, ?, ?)",
            (name, dataset, device, QUEUED, self._next_seq(), time.time()),
        )
        job_id = int(cursor.lastrowid or 0)
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.yaml").write_text(make_yaml(folder), encoding="utf-8")
        return self.get(job_id)

    def get(self, job_id: int) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return Job(**{**dict(row), "resume": bool(row["resume"])})

    def all(self) -> list[Job]:
        rows = self._db.execute("SELECT id FROM jobs ORDER BY id DESC").fetchall()
        return [self.get(int(r[0])) for r in rows]

    def queued(self, device: str) -> list[Job]:
        rows = self._db.execute(
            "SELECT id FROM jobs WHERE state = ? AND device = ? ORDER BY seq", (QUEUED, device)
        ).fetchall()
        return [self.get(int(r[0])) for r in rows]

    def active(self, device: str) -> Job | None:
        row = self._db.execute(
            "SELECT id FROM jobs WHERE state IN (?, ?) AND device = ?", (RUNNING, STOPPING, device)
        ).fetchone()
        return None if row is None else self.get(int(row[0]))

    def update(self, job_id: int, **fields: Any) -> Job:
        names = ", ".join(f"{key} = ?" for key in fields)
        self._db.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*fields.values(), job_id))
        return self.get(job_id)

    def requeue(self, job_id: int) -> Job:
        return self.update(job_id, state=QUEUED, resume=1, seq=self._next_seq(), exit_code=None,
                           message="", pid=None, finished=None)

    def position(self, job: Job) -> int:
        """0 while running; else 1 + the jobs ahead of it on its device (the running one included)."""
        if job.state != QUEUED:
            return 0
        ahead = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE device = ? AND ((state = ? AND seq < ?) OR state IN (?, ?))",
            (job.device, QUEUED, job.seq, RUNNING, STOPPING),
        ).fetchone()
        return int(ahead[0]) + 1

    def has_checkpoint(self, job_id: int) -> bool:
        folder = self.job_dir(job_id) / "output" / "checkpoints"
        return folder.is_dir() and any(p.suffix == ".pt" for p in folder.iterdir())

    def recover(self) -> list[int]:
        """After a studio restart: jobs that were running are interrupted (their process is gone)."""
        rows = self._db.execute("SELECT id, pid FROM jobs WHERE state IN (?, ?)", (RUNNING, STOPPING)).fetchall()
        recovered = []
        for row in rows:
            _end_orphan(row["pid"], self.job_dir(int(row["id"])))
            resumable = self.has_checkpoint(int(row["id"]))
            note = "the studio stopped while this job ran; " + (
                "resume it from its last checkpoint" if resumable else "no checkpoint yet: resume starts it again"
            )
            self.update(int(row["id"]), state=INTERRUPTED, finished=time.time(), message=note, pid=None)
            recovered.append(int(row["id"]))
        return recovered


def _end_orphan(pid: int | None, job_dir: Path) -> None:
    """Kill a training process left by a previous studio, if that pid is still that job's."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return
    if str(job_dir) in cmdline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """Linux: the training process gets SIGTERM when the studio process dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def read_events(job_dir: Path) -> list[dict[str, Any]]:
    """The progress events the run wrote so far (a half-written last line is ignored)."""
    path = job_dir / "events.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


def log_tail(job_dir: Path, lines: int = 40) -> str:
    path = job_dir / "train.log"
    if not path.is_file():
        return ""
    data = path.read_bytes()[-16384:].decode("utf-8", errors="replace")
    # tqdm-style carriage returns: keep the last state of each line
    return "\n".join(part.rsplit("\r", 1)[-1] for part in data.splitlines()[-lines:])


class JobRunner:
    """Starts queued jobs in order, one per device, and drives each to a final state."""

    def __init__(self, store: JobStore, *, python: str | None = None, stop_grace_s: float = 10.0) -> None:
        self.store = store
        self.python = python or sys.executable
        self.stop_grace_s = stop_grace_s
        self._wake = asyncio.Event()
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._waiters: dict[int, asyncio.Task[None]] = {}  # job id -> the task that finalises it
        self._loop_task: asyncio.Task[None] | None = None
        self.changed = asyncio.Condition()  # notified on every state change (tests and pages wait on it)

    async def start(self) -> None:
        self.store.recover()
        self._loop_task = asyncio.create_task(self._schedule())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for job_id in list(self._procs):
            await self.stop(job_id)
        if self._waiters:
            await asyncio.gather(*self._waiters.values(), return_exceptions=True)

    def poke(self) -> None:
        self._wake.set()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            devices = {row[0] for row in self.store._db.execute("SELECT DISTINCT device FROM jobs WHERE state = ?", (QUEUED,))}
            for device in sorted(devices):
                if self.store.active(device) is None:
                    queued = self.store.queued(device)
                    if queued:
                        await self._launch(queued[0])

    async def _launch(self, job: Job) -> None:
        folder = self.store.job_dir(job.id)
        command = [self.python, "-m", "trainer", "--config", str(folder / "train.yaml"), "--quiet",
                   "--events", str(folder / "events.jsonl")]
        if job.resume and self.store.has_checkpoint(job.id):
            command.append("--resume")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with (folder / "train.log").open("ab") as log:
            log.write(f"$ {' '.join(command[1:])}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                *command, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        self._procs[job.id] = proc
        self.store.update(job.id, state=RUNNING, pid=proc.pid, started=time.time())
        self._waiters[job.id] = asyncio.create_task(self._wait(job.id, proc))
        await self._notify()

    async def _wait(self, job_id: int, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._procs.pop(job_id, None)
        self._waiters.pop(job_id, None)
        job = self.store.get(job_id)
        if job.state == STOPPING:
            state, message = STOPPED, "stopped on request" + (
                "; resume continues from the last checkpoint" if self.store.has_checkpoint(job_id) else ""
            )
        elif code == 0:
            state, message = SUCCEEDED, "finished"
        else:
            state, message = FAILED, _last_error(self.store.job_dir(job_id)) or f"covergen-train exited with {code}"
        self.store.update(job_id, state=state, exit_code=code, finished=time.time(), message=message, pid=None)
        self.poke()
        await self._notify()

    async def stop(self, job_id: int) -> Job:
        """Stop a job: a queued one ends at once; a running one is signalled and ends when it exits."""
        job = self.store.get(job_id)
        if job.state == QUEUED:
            job = self.store.update(job_id, state=STOPPED, finished=time.time(), message="removed from the queue")
            await self._notify()
            return job
        proc, waiter = self._procs.get(job_id), self._waiters.get(job_id)
        if job.state not in (RUNNING, STOPPING) or proc is None or waiter is None:
            return job
        self.store.update(job_id, state=STOPPING)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        _, pending = await asyncio.wait({waiter}, timeout=self.stop_grace_s)
        if pending:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(waiter)  # it records the final state
        return self.store.get(job_id)

    async def resume(self, job_id: int) -> Job:
        job = self.store.get(job_id)
        if job.state not in (STOPPED, INTERRUPTED, FAILED):
            raise ValueError(f"job {job_id} is {job.state}; only a stopped, interrupted or failed job resumes")
        job = self.store.requeue(job_id)
        self.poke()
        await self._notify()
        return job


def _last_error(job_dir: Path) -> str:
    lines = [line for line in log_tail(job_dir, 20).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or [""])[-1][:500]
