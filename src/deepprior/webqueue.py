"""What a shared web app needs around Gradio's queue: admission, abandoned fits, and the wait.

Gradio's queue runs the fits ``concurrency`` at a time, in the order they came. Around it:

* **Admission**, when a request joins the queue (the event's validator): the work it asks for
  (result pixels x iterations) must be under ``max_work``, and one client (a browser tab or an
  API client: Gradio's session) may have at most ``max_queued_per_client`` requests waiting or
  running. A refused request never enters the queue, and its client gets one line saying why.
* **Abandoned fits**: a fit runs in a worker thread while its request's coroutine watches the
  client. When the client goes (tab closed, connection dropped, the request cancelled), the fit
  is told to stop and ends within a few iterations with the CPU it would have burned unspent.
* **Where a request stands**: its place in the queue and an estimate of the wait, from the
  running fits' own time left and the queued requests' work at the seconds per
  pixel-iteration this server has measured on its finished fits.
* **Counts** of what happened to every request, for the load benchmark (``bench/app.py``).

Gradio keeps its queue's state in attributes it does not document (``_queue``, ``active_jobs``,
``event_queue_per_concurrency_id``, the running task's name): every use of them is in this module.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from .errors import DeepPriorError

#: The queue the fits share (their events' ``concurrency_id``).
FIT_QUEUE = "fit"
#: Seconds per result pixel per iteration assumed before any fit has finished here (the fast
#: network on one thread of a laptop-class CPU), divided by the threads a fit gets.
FIRST_GUESS_S_PER_UNIT = 3e-6
#: An admitted request not in the queue after this many seconds has left it (or never joined).
STALE_ADMISSION_S = 30.0


@dataclass
class Job:
    """One admitted request, from the moment its fit starts."""

    session: str
    work: float  # result pixels x iterations asked for
    started: float = field(default_factory=time.monotonic)
    eta_s: float | None = None  # the fit's own estimate of its time left, once it reports
    ended: float | None = None
    outcome: str = "running"  # then "served", "failed", "stopped" (Stop button) or "abandoned"


class ServerQueue:
    """Admission, liveness, wait estimates and counts for one app (see the module docstring)."""

    def __init__(self, concurrency: int, threads: int, max_work: float | None, max_queued_per_client: int):
        if max_work is not None and max_work <= 0:
            raise DeepPriorError(f"max work must be positive, got {max_work}")
        if max_queued_per_client < 1:
            raise DeepPriorError(f"max queued per client must be at least 1, got {max_queued_per_client}")
        self.concurrency = concurrency
        self.threads = threads
        self.max_work = max_work
        self.max_queued_per_client = max_queued_per_client
        self.blocks = None  # the gr.Blocks, set once it is built
        self.s_per_unit = FIRST_GUESS_S_PER_UNIT / max(1, threads)
        self.counts: Counter = Counter()
        self.jobs: list[Job] = []
        self._admitted: dict[str, deque] = {}  # session -> (time, work) of its admitted, not yet started requests
        self._lock = threading.Lock()

    # -- admission ---------------------------------------------------------------------------

    def admit(self, session: str | None, work: float) -> str | None:
        """None when a request of ``work`` from ``session`` may join the queue, else why not."""
        if self.max_work is not None and work > self.max_work:
            self.counts["refused"] += 1
            return (f"this request asks for {work / 1e6:,.0f} million pixel-iterations (result pixels x "
                    f"iterations); this server takes at most {self.max_work / 1e6:,.0f} million: ask for fewer "
                    "iterations or a smaller image")
        queued = Counter(e.session_hash or "" for e in self._queued_events())
        mine = (queued[session] if session is not None else 0) + self._running(session)
        if mine >= self.max_queued_per_client:
            self.counts["refused"] += 1
            return (f"you already have {mine} restoration{'s' if mine > 1 else ''} waiting or running; this "
                    f"server takes at most {self.max_queued_per_client} per client at a time")
        with self._lock:
            # Requests that left the queue before starting (their client went) leave entries behind;
            # an entry younger than a few seconds may be one whose event is still being queued.
            now = time.monotonic()
            for s in list(self._admitted):
                pending = self._admitted[s]
                while len(pending) > queued[s] and now - pending[0][0] > STALE_ADMISSION_S:
                    pending.popleft()
                if not pending:
                    del self._admitted[s]
            self._admitted.setdefault(session or "", deque()).append((now, work))
        return None

    # -- running -----------------------------------------------------------------------------

    def start(self, session: str | None) -> Job:
        """Record that a request of ``session`` is starting its fit."""
        with self._lock:
            pending = self._admitted.get(session or "")
            work = pending.popleft()[1] if pending else 0.0
            if pending is not None and not pending:
                del self._admitted[session or ""]
            job = Job(session or "", work)
            if len(self.jobs) > 1000:  # keep the running ones and the latest finished ones
                self.jobs = [j for j in self.jobs if j.ended is None] + [j for j in self.jobs if j.ended][-500:]
            self.jobs.append(job)
        return job

    def finish(self, job: Job, outcome: str, iterations_run: int | None = None, iterations_asked: int | None = None):
        """Record how ``job`` ended (once: later calls change nothing); a served fit teaches the
        time per unit of work."""
        if job.ended is not None:
            return
        job.ended = time.monotonic()
        job.outcome = outcome
        self.counts[outcome] += 1
        if outcome == "served" and job.work and iterations_run and iterations_asked:
            done = job.work * iterations_run / iterations_asked
            if done > 0:
                self.s_per_unit = 0.7 * self.s_per_unit + 0.3 * (job.ended - job.started) / done

    async def watch(self, job: Job, fit, stop: threading.Event) -> None:
        """Wait (without blocking the event loop) for ``fit`` to end, stopping it when its client
        goes or the request is cancelled; then wait for its last iterations to finish."""
        event = self.current_event()
        try:
            while fit.alive():
                await asyncio.sleep(0.1)
                if event is not None and not event.alive and not stop.is_set():
                    job.outcome = "abandoned"
                    stop.set()
        except asyncio.CancelledError:
            job.outcome = "abandoned"
            stop.set()
            while fit.alive():  # the thread ends within a few iterations; do not free its slot before
                await asyncio.sleep(0.05)
            raise
        finally:
            if job.outcome == "abandoned" and not fit.alive():
                self.finish(job, "abandoned")

    def current_event(self):
        """The queue event the running coroutine serves (Gradio names its task after it), or None."""
        try:
            name = asyncio.current_task().get_name()
        except RuntimeError:
            return None
        event_id = name.rpartition("<gradio-sep>")[2]
        queue = self._queue()
        for events in queue.active_jobs if queue is not None else ():
            for event in events or ():
                if event._id == event_id:
                    return event
        return None

    # -- where a request stands ----------------------------------------------------------------

    def status(self, session: str | None) -> dict:
        """The queue as ``session`` sees it: ``position`` (1 = next; None when it has nothing
        waiting), ``waiting`` and ``running`` counts, and ``wait_s``, the estimated seconds
        before its first waiting request starts (before any new request would, when it has none)."""
        queued = self._queued_events()
        with self._lock:
            running = [j for j in self.jobs if j.ended is None]
            # Slots free at: each running fit's own estimate (or its work at the measured rate).
            free = [max(0.0, j.eta_s if j.eta_s is not None else self._estimate(j.work) - (time.monotonic() - j.started))
                    for j in running][: self.concurrency]
            free += [0.0] * (self.concurrency - len(free))
            heapq.heapify(free)
            seen: Counter = Counter()
            position = None
            for i, event in enumerate(queued):
                s = event.session_hash or ""
                if s == (session or "") and position is None:
                    position = i + 1
                    break
                pending = self._admitted.get(s, ())
                work = pending[seen[s]][1] if seen[s] < len(pending) else self._typical_work()
                seen[s] += 1
                heapq.heapreplace(free, free[0] + self._estimate(work))
        return {"position": position, "waiting": len(queued), "running": len(running),
                "wait_s": round(free[0], 1)}

    def describe(self, session: str | None) -> str:
        """One line for a person: where their request stands, or how busy the server is."""
        st = self.status(session)
        wait = _fmt_wait(st["wait_s"])
        if st["position"] is not None:
            ahead = st["position"] - 1
            return (f"In the queue: {_ordinal(st['position'])} in line ({ahead} request{'s' if ahead != 1 else ''} "
                    f"ahead of yours, {st['running']} running); it should start in about {wait}.")
        if st["running"] >= self.concurrency:
            return f"Busy: {st['running']} running, {st['waiting']} waiting; a new request would start in about {wait}."
        return f"Ready: {st['running']} running, {st['waiting']} waiting."

    # -- Gradio's queue ----------------------------------------------------------------------------

    def _queue(self):
        return getattr(self.blocks, "_queue", None)

    def _queued_events(self) -> list:
        q = self._queue()
        if q is None:
            return []
        fits = q.event_queue_per_concurrency_id.get(FIT_QUEUE)
        return list(fits.queue) if fits is not None else []

    def _running(self, session: str | None) -> int:
        with self._lock:
            return sum(1 for j in self.jobs if j.ended is None and session is not None and j.session == session)

    def _estimate(self, work: float) -> float:
        return work * self.s_per_unit

    def _typical_work(self) -> float:
        done = [j.work for j in self.jobs[-20:] if j.work]
        return sorted(done)[len(done) // 2] if done else 0.0


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _fmt_wait(s: float) -> str:
    s = int(round(s))
    if s < 5:
        return "a few seconds"
    if s < 90:
        return f"{s} s"
    return f"{round(s / 60)} min"
