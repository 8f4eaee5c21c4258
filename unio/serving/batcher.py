"""Dynamic batching, in one worker thread so that the event loop stays free. Two schedulers:
:class:`StepBatcher` (``unio serve``'s default: requests join the decoding batch at any step, see
its doc) and :class:`Batcher`, described here: requests arriving within a short window share one
model call. Requests batch with those of their ``pool``:
their own task and options, or (``unio serve --mix-tasks``) :data:`MIXED`, the pool of every
greedy request whatever its task (the pipeline decodes such a batch together:
:meth:`unio.pipeline.Pipeline.run_many`).

A :class:`Job` waits in one first-in-first-out queue. The scheduler (a coroutine on the event
loop) takes the oldest job's pool, waits until that pool has ``max_batch`` jobs or the oldest has
waited ``max_wait`` seconds, and hands up to ``max_batch`` jobs of that pool to the worker
thread; while the model runs, new requests keep queueing, so a busy server makes larger
batches by itself. Each job's answer goes to its own future, by position: a caller that gives up
(timeout, disconnect) cancels its future, which takes it out of the queue, or, when its batch is
already running, only drops its answer; the others of the batch get theirs.

``run_batch(jobs)`` runs in the worker thread and returns one outcome per job: a result or the
exception that job raised.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ..batching import Parse

__all__ = ["Job", "Batcher", "StepBatcher", "QueueFull", "MIXED"]

MIXED = "mixed"  # the pool of requests that can share a model call with any task's


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


@dataclass(eq=False)
class Job:
    """One request waiting for the model: the task, its key (task + options), the decoded image
    (or None), the task's inputs and checked options; jobs batch only within their ``pool``
    (default: their key)."""

    task: str
    key: Any
    image: Any
    inputs: dict
    options: dict
    arrived: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None
    pool: Any = None

    def __post_init__(self):
        if self.pool is None:
            self.pool = self.key

    def request(self) -> dict:
        """The request as ``pipe.run_many`` and a Stream take it."""
        return {"task": self.task, "image": self.image, **self.inputs, **self.options}


class Batcher:
    """Queue + scheduler + one worker thread. Use :meth:`submit` from the event loop."""

    def __init__(self, run_batch: Callable[[list[Job]], list], *, max_batch: int = 16, max_wait: float = 0.01,
                 max_queue: int = 256, on_batch: Callable[[list[str], int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.run_batch = run_batch
        self.max_batch, self.max_wait, self.max_queue = int(max_batch), float(max_wait), int(max_queue)
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unio-serve-worker")
        self.batch_sizes: deque[int] = deque(maxlen=10_000)   # of every model call, newest last
        self.running = 0                                      # jobs in the model call now running
        self._queue: deque[Job] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    # -- the caller's side
    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> asyncio.Future:
        """Queue ``job``; its future gets the result (or the exception). QueueFull when full."""
        self.ensure_started()
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting); retry shortly")
        job.future = self._loop.create_future()
        job.future.add_done_callback(lambda _f, j=job: self._forget(j))
        self._queue.append(job)
        self._wake.set()
        return job.future

    def ensure_started(self) -> None:
        """Start the scheduler on the running loop (again, if an earlier loop has gone)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop, self._wake = loop, asyncio.Event()
        self._queue.clear()                         # jobs of a loop that has gone cannot be answered
        self._task = loop.create_task(self._schedule(), name="unio-serve-scheduler")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in list(self._queue):
            job.future.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def call(self, fn, *args):
        """Run ``fn(*args)`` in the worker thread (model loading): an awaitable."""
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _forget(self, job: Job) -> None:
        if job.future.cancelled():
            try:
                self._queue.remove(job)
            except ValueError:      # already taken into a batch
                pass

    # -- the scheduler
    def _next_batch(self) -> list[Job] | float:
        """The jobs to run now, or how long to wait for more (seconds)."""
        first = self._queue[0]
        same = [j for j in self._queue if j.pool == first.pool]
        wait = first.arrived + self.max_wait - time.monotonic()
        if len(same) < self.max_batch and wait > 0:
            return wait
        batch = same[: self.max_batch]
        for j in batch:
            self._queue.remove(j)
        return batch

    async def _schedule(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            nxt = self._next_batch()
            if isinstance(nxt, float):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), nxt)
                except (asyncio.TimeoutError, TimeoutError):
                    pass
                continue
            await self._run(nxt)

    async def _run(self, batch: list[Job]) -> None:
        jobs = [j for j in batch if not j.future.done()]
        if not jobs:
            return
        self.batch_sizes.append(len(jobs))
        self.running = len(jobs)
        t0 = time.monotonic()
        try:
            outcomes = await self.call(_outcomes, self.run_batch, jobs)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the executor itself failed (shut down): every job gets it
            outcomes = [exc] * len(jobs)
        finally:
            self.running = 0
        if self.on_batch is not None:  # the tasks the call served, its size, its time
            self.on_batch(list(dict.fromkeys(j.task for j in jobs)), len(jobs), time.monotonic() - t0)
        for job, out in zip(jobs, outcomes):
            _settle(job.future, out)


def _outcomes(run_batch, jobs: list[Job]) -> list:
    """``run_batch(jobs)``, with one failing call turned into one outcome per job."""
    try:
        out = run_batch(jobs)
    except Exception as exc:
        return [exc] * len(jobs)
    if len(out) != len(jobs):
        err = RuntimeError(f"the model answered {len(out)} of {len(jobs)} requests")
        return [err] * len(jobs)
    return list(out)


class StepBatcher:
    """Iteration-level batching (``unio serve``'s default on a torch model): the worker thread
    keeps one :class:`~unio.batching.Stream` decoding; requests that arrive join it at the next
    step (up to ``max_batch`` rows decoding at once, the rest wait their turn in arrival order)
    and each is answered the step its own rows end, so nobody waits for a batch to fill or to
    drain. Requests that cannot share greedy decoding (beams, sampling, candidates, guidance:
    ``joins(job)`` is False) run as a batch of their own between two steps, through ``run_batch``.

    Same interface as :class:`Batcher`; ``batch_sizes`` records the rows of every step and
    ``on_batch`` sees every step (the tasks decoding, their rows, the step's time). A caller that
    gives up cancels its future: its request leaves the queue or the batch at the next step."""

    def __init__(self, stream: Callable[[], Any], joins: Callable[[Job], bool], run_batch: Callable[[list[Job]], list],
                 *, max_batch: int = 16, max_queue: int = 256,
                 on_batch: Callable[[list[str], int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.make_stream, self.joins, self.run_batch = stream, joins, run_batch
        self.max_batch, self.max_queue, self.on_batch = int(max_batch), int(max_queue), on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unio-serve-worker")
        # answers are read from their tokens (a depth map's codes decoded ...) beside the next steps
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unio-serve-reader")
        self.batch_sizes: deque[int] = deque(maxlen=10_000)
        self.running = 0
        self._queue: deque[Job] = deque()   # arrived, not yet taken by the worker
        self._waiting = 0                   # taken, waiting in the stream for room
        self._lock = threading.Lock()
        self._draining = False
        self._stream = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queue_length(self) -> int:
        return len(self._queue) + self._waiting

    def submit(self, job: Job) -> asyncio.Future:
        self.ensure_started()
        if self.queue_length >= self.max_queue:
            raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting); retry shortly")
        job.future = self._loop.create_future()
        with self._lock:
            self._queue.append(job)
            start, self._draining = not self._draining, True
        if start:
            self.executor.submit(self._drain)
        return job.future

    def ensure_started(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        with self._lock:
            jobs, self._queue = list(self._queue), deque()
        for job in jobs:
            job.future.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.reader.shutdown(wait=False, cancel_futures=True)

    def call(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- the worker thread
    def _drain(self) -> None:
        """Take arrivals, step the stream, answer, until nothing is left to do."""
        live: set[Job] = set()  # jobs in the stream (Job hashes by identity)
        while True:
            with self._lock:
                arrived, self._queue = list(self._queue), deque()
                stream = self._stream
                if not arrived and (stream is None or not stream.busy):
                    self._draining = False
                    return
            if stream is None and arrived:
                try:
                    stream = self._stream = self.make_stream()  # None: the model cannot step (another backend)
                except Exception as exc:
                    for job in arrived:
                        self._answer(job, exc)
                    continue
            own = []
            for job in arrived:
                if job.future.done():
                    continue
                if stream is None or not self.joins(job):
                    own.append(job)
                    continue
                try:
                    stream.add(job.request(), handle=job)
                    live.add(job)
                except Exception as exc:
                    self._answer(job, exc)
            for group in _groups(own):  # the others: a batch per task and options, between two steps
                for job, out in zip(group, _outcomes(self.run_batch, group)):
                    self._answer(job, out)
            for job in [j for j in live if j.future.done()]:  # callers that gave up
                stream.drop(job)
                live.discard(job)
            if stream is None or not stream.busy:
                continue
            self.running = stream.rows
            t0 = time.monotonic()
            try:
                done = stream.step()
            except Exception as exc:  # the model itself failed: every request in it gets the error
                done = [(job, exc) for job in live]
                self._stream = None
            self.running = 0
            rows = stream.decoded
            self._waiting = len(stream.waiting) if self._stream is stream else 0
            if self.on_batch is not None and rows:
                self.on_batch(stream.decoded_tasks, rows, time.monotonic() - t0)
            if rows:
                self.batch_sizes.append(rows)
            for job, out in done:
                live.discard(job)
                if isinstance(out, Parse):
                    self.reader.submit(self._read, job, out)
                else:
                    self._answer(job, out)
            if self._stream is None:
                live.clear()

    def _answer(self, job: Job, out) -> None:
        self._loop.call_soon_threadsafe(_settle, job.future, out)

    def _read(self, job: Job, parse) -> None:
        self._answer(job, parse())  # Stream answers exceptions as outcomes


def _settle(future: asyncio.Future, out) -> None:
    if future.done():   # its caller gave up: drop its answer only
        return
    if isinstance(out, BaseException):
        future.set_exception(out)
    else:
        future.set_result(out)


def _groups(jobs: list[Job]) -> list[list[Job]]:
    out: dict = {}
    for job in jobs:
        out.setdefault(job.key, []).append(job)
    return list(out.values())
