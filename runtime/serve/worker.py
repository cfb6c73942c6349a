"""The one thread that owns the Engine, and the queue of requests waiting for it.

llama.cpp's context holds one adapter set and one KV cache, so requests cannot share it at the same time: they
wait in a FIFO queue and the worker runs them one after another, switching the adapter between them. A request is
never dropped once queued: it runs, or (at shutdown) it gets an error event. A client that goes away sets its
job's `cancelled` flag; the worker checks it between tokens and moves on, so a dead stream frees the slot within
one decode step.

Events cross from the worker thread to the event loop with `call_soon_threadsafe`, one asyncio.Queue per job.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from edgeft.errors import EdgeftError

log = logging.getLogger("edgeft.serve")


@dataclass
class Failed:
    status: int
    message: str


class Busy(Exception):
    """The queue is full: the request is refused before it is queued (503), not dropped after."""


_END = object()


class Job:
    """`run(engine, cancelled)` yields events; they arrive, in order, through `events()` on the event loop."""

    def __init__(self, run: Callable[..., Iterator], loop: asyncio.AbstractEventLoop):
        self.run = run
        self.cancelled = threading.Event()
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()

    def put(self, event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()

    async def events(self):
        while True:
            event = await self._events.get()
            if event is _END:
                return
            yield event


class Worker:
    def __init__(self, engine, *, max_queue: int = 64):
        self.engine = engine
        self._queue: queue.Queue = queue.Queue()
        self._max_queue = max_queue
        self._stopping = False
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="edgeft-serve-worker", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._stopping:
                raise Busy("the server is shutting down")
            if self._queue.qsize() >= self._max_queue:
                raise Busy(f"{self._max_queue} requests are already waiting; retry later")
            self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            outcome = "failed"
            try:
                if not job.cancelled.is_set():
                    for event in job.run(self.engine, job.cancelled.is_set):
                        job.put(event)
                outcome = "cancelled" if job.cancelled.is_set() else "completed"
            except EdgeftError as exc:
                job.put(Failed(400, str(exc)))
            except Exception as exc:  # a failure inside llama.cpp must not kill the worker for everyone else
                log.exception("generation failed")
                job.put(Failed(500, f"generation failed: {exc}"))
            finally:
                self.counts[outcome] += 1
                job.put(_END)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, answer the waiting ones with an error, let the running one end, then stop the thread."""
        with self._lock:
            self._stopping = True
            waiting = []
            while True:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._queue.put(None)
        for job in waiting:
            if job is not None:
                job.put(Failed(503, "the server is shutting down"))
                job.put(_END)
        self._thread.join(timeout)

