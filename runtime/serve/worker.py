"""The one thread that owns the Engine and runs its decoder's loop, and the queue of requests waiting for a slot.

Requests wait in a FIFO queue; between two decode steps the loop takes as many as there are free slots
(runtime.decode: continuous batching), so a request starts within one step of a slot freeing and every active
request advances one token per step of its adapter group. A request is never dropped once queued: it runs, or
(at shutdown) it gets an error event. A client that goes away sets its job's `cancelled` flag; the loop checks it
before every step, so a dead stream frees its slot within one decode step.

Events cross from the worker thread to the event loop with `call_soon_threadsafe`, one asyncio.Queue per job.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

from convert.common.errors import EdgeftError

log = logging.getLogger("edgeft.serve")


@dataclass
class Failed:
    status: int
    message: str


class Busy(Exception):
    """The queue is full: the request is refused before it is queued (503), not dropped after."""


_END = object()


class Job:
    """`make(engine, cancelled)` returns the runtime.decode Request to decode (tokenizing in the worker); its
    events arrive, in order, through `events()` on the event loop: as the text grows when `streaming`, else the
    whole text and Done once it has stopped (a non-streamed answer needs nothing sooner, and every event wakes the
    event loop's thread, which takes a core from llama.cpp's threads in the middle of a decode)."""

    def __init__(self, make: Callable, loop: asyncio.AbstractEventLoop, *, streaming: bool = True):
        from runtime.serve.engine import Stream

        self.make = make
        self.streaming = streaming
        self.cancelled = threading.Event()
        self.stream = Stream()
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
        self._closing = False
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0}
        self._jobs: dict[int, Job] = {}  # id(Request) -> its job, while it decodes
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
            try:
                self.engine.decoder.run([], admit=self._admit, on_step=self._emit)
                return
            except Exception as exc:  # a failure inside llama.cpp must not kill the worker for everyone else
                log.exception("generation failed")
                for job in self._jobs.values():
                    self._finish(job, "failed", Failed(500, f"generation failed: {exc}"))
                self._jobs.clear()
                self.engine.decoder.reset()

    def _admit(self, idle: bool):
        """Requests for the free slots; blocks while the loop is idle; None once shut down and idle."""
        if self._closing:
            return None if idle else []
        requests = []
        while len(requests) < len(self.engine.decoder.free):
            try:
                job = self._queue.get(block=idle and not requests)
            except queue.Empty:
                break
            if job is None:
                self._closing = True
                return None if idle and not requests else requests
            request = self._request(job)
            if request is not None:
                self._jobs[id(request)] = job
                requests.append(request)
        return requests

    def _request(self, job: Job):
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
            return None
        try:
            return job.make(self.engine, job.cancelled.is_set)
        except EdgeftError as exc:
            self._finish(job, "failed", Failed(400, str(exc)))
        except Exception as exc:
            log.exception("tokenizing failed")
            self._finish(job, "failed", Failed(500, f"generation failed: {exc}"))
        return None

    def _emit(self, active) -> None:
        for sequence in active:
            job = self._jobs.get(id(sequence.request))
            if job is None or not (job.streaming or sequence.stopped is not None):
                continue
            for event in job.stream.events(sequence):
                job.put(event)
            if sequence.stopped is not None:
                del self._jobs[id(sequence.request)]
                self._finish(job, "cancelled" if sequence.stopped == "cancelled" else "completed")

    def _finish(self, job: Job, outcome: str, event=None) -> None:
        if event is not None:
            job.put(event)
        self.counts[outcome] += 1
        job.put(_END)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, answer the waiting ones with an error, let the running ones end, then stop the thread."""
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
