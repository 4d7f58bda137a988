"""The one generation worker and its queue: jobs that can be cancelled at any token.

A request becomes a :class:`Job` with one deadline for all its work (queue wait and every decode
of a coverage request together). A client that disconnects, a deadline that passes and a shutdown
all do the same thing: set the job's cancel event. A job cancelled while waiting never starts; a
running one stops at its next decoding step (:func:`stopping_criteria`, checked once per token) or,
in a model the queue watches (:meth:`WorkQueue.watch`), at its next layer, so abandoned work costs
the worker less than one step. The queue counts what is really waiting and
running, so ``/healthz`` and the 429's ``Retry-After`` tell the truth.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

SAMPLES = 10_000  # recent timings kept for /healthz


def _summary_ms(values: Iterable[float]) -> tuple[float | None, float | None, float | None]:
    """Mean, median and max of ``values`` in milliseconds (None when there are none)."""
    import statistics

    values = sorted(values)
    if not values:
        return None, None, None
    return tuple(round(1000 * x, 2) for x in (sum(values) / len(values), statistics.median(values), values[-1]))


class Cancelled(Exception):
    """The job was cancelled (client gone, deadline passed, shutdown); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QueueFull(Exception):
    def __init__(self, waiting: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"{waiting} requests are queued or running, the limit is {limit}; "
                         f"retry in about {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Job:
    """One request's work. ``fn(job)`` runs on the worker; it calls :meth:`check` between decodes."""

    fn: Callable[[Job], Any]
    deadline: float  # time.monotonic() by which everything must be done
    future: Future = field(default_factory=Future)
    reason: str | None = None  # why it was cancelled, once it is
    started: float | None = None
    cancelled_at: float | None = None
    ticks: list[float] = field(default_factory=list)  # when each decoding step was checked
    tick_cpu: list[float] = field(default_factory=list)  # the worker thread's CPU time at each check
    worker_clock: int | None = None  # the CPU-time clock of the worker thread, while the job runs
    cpu_at_cancel: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str, at: float | None = None) -> None:
        if not self._cancel.is_set():
            self.reason, self.cancelled_at = reason, at if at is not None else time.monotonic()
            if self.worker_clock is not None:  # running: how much CPU the worker had used by now
                self.cpu_at_cancel = time.clock_gettime(self.worker_clock)
            self._cancel.set()

    @property
    def cancelled(self) -> bool:
        if not self._cancel.is_set() and time.monotonic() >= self.deadline:
            self.cancel("deadline", at=self.deadline)
        return self._cancel.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(self.reason or "cancelled")

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def stopping_criteria(job: Job) -> Any:
    """A transformers stopping criterion that ends generation at the next token once ``job`` is cancelled."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenCancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            job.ticks.append(time.monotonic())
            job.tick_cpu.append(time.thread_time())
            return torch.full((input_ids.shape[0],), job.cancelled, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenCancelled()])


class WorkQueue:
    """At most ``limit`` jobs waiting or running, served one at a time by a daemon worker thread (a
    generation left running at exit would keep the process alive for nobody)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._jobs: deque[Job] = deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._service_s: float | None = None  # moving average of a completed job's time on the worker
        self.completed = self.cancelled = 0
        self.abandoned_s = 0.0  # worker time spent on jobs after they were cancelled, since start
        # Recent samples for /healthz (bounded: a server runs for weeks): how long each cancelled running
        # job ran on after its cancel, in wall and worker CPU time, and the decoding steps of completed jobs.
        self.after_cancel: deque[float] = deque(maxlen=SAMPLES)
        self.after_cancel_cpu: deque[float] = deque(maxlen=SAMPLES)
        self.steps: deque[float] = deque(maxlen=SAMPLES)
        self.steps_cpu: deque[float] = deque(maxlen=SAMPLES)
        self._thread = threading.Thread(target=self._work, name="chefgenius-generate", daemon=True)
        self._thread.start()

    # ----- what callers see ----------------------------------------------------------------------

    def watch(self, model: Any) -> Any:
        """Let a cancel stop ``model`` inside a decoding step, not only between steps: before each layer
        of its stacks (every ``nn.ModuleList``), on the worker, a cancelled running job raises
        :class:`Cancelled`. Elsewhere (another thread, no job running) the check does nothing."""
        import torch

        def check(module: Any, args: Any) -> None:
            job = self._running
            if job is not None and threading.get_ident() == self._thread.ident and job.cancelled:
                raise Cancelled(job.reason or "cancelled")

        for stack in model.modules():
            if isinstance(stack, torch.nn.ModuleList):
                for layer in stack:
                    layer.register_forward_pre_hook(check)
        return model

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                raise Cancelled("shutdown")
            waiting = len(self._jobs) + (self._running is not None)
            if waiting >= self.limit:
                raise QueueFull(waiting, self.limit, self.retry_after_s())
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {"queued": sum(not j.cancelled for j in self._jobs), "running": int(self._running is not None)}

    def stats(self) -> dict[str, Any]:
        """Since start: jobs completed and cancelled, and what cancellation cost the worker: how long a
        cancelled running job ran on after its cancel, in wall time and in the worker thread's CPU time,
        against a decoding step of a completed job measured the same two ways."""
        with self._cond:
            after, after_cpu = list(self.after_cancel), list(self.after_cancel_cpu)
            steps, steps_cpu = list(self.steps), list(self.steps_cpu)
        out: dict[str, Any] = {"completed": self.completed, "cancelled": self.cancelled,
                               "cancelled_while_running": len(after)}
        for key, values in (("after_cancel_ms", after), ("after_cancel_cpu_ms", after_cpu)):
            out.update(zip((f"{key}_mean", f"{key}_median", f"{key}_max"), _summary_ms(values)))
        out["decoding_step_ms_median"] = _summary_ms(steps)[1]
        out["decoding_step_cpu_ms_median"] = _summary_ms(steps_cpu)[1]
        return out

    def retry_after_s(self) -> int:
        """Seconds until a slot frees: what the running job has left at the measured service time."""
        service = self._service_s if self._service_s is not None else 2.0
        running = self._running
        left = service - (time.monotonic() - running.started) if running and running.started else service
        return max(1, round(left))

    def close(self, grace_s: float) -> None:
        """Refuse new jobs, let the queue drain for ``grace_s`` seconds, then cancel what is left."""
        end = time.monotonic() + grace_s
        with self._cond:
            self._closed = True
            while (self._jobs or self._running) and time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
            for job in [*self._jobs, *([self._running] if self._running else [])]:
                job.cancel("shutdown")
            self._cond.notify_all()

    def idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running (tests, shutdown); True if it got there."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while self._jobs or self._running:
                if not self._cond.wait(max(0.0, end - time.monotonic())):
                    return False
            return True

    # ----- the worker ------------------------------------------------------------------------------

    def _next(self) -> Job | None:
        with self._cond:
            while True:
                while self._jobs and self._jobs[0].cancelled:  # never started: nothing to stop
                    job = self._jobs.popleft()
                    job.future.set_exception(Cancelled(job.reason or "cancelled"))
                    self.cancelled += 1
                    self._cond.notify_all()
                if self._jobs:
                    self._running = self._jobs.popleft()
                    self._running.started = time.monotonic()
                    if hasattr(time, "pthread_getcpuclockid"):
                        self._running.worker_clock = time.pthread_getcpuclockid(threading.get_ident())
                    return self._running
                if self._closed:
                    return None
                self._cond.wait()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            result, error = None, None
            try:
                job.check()
                result = job.fn(job)
                job.check()  # stopped early by the criterion: its partial result is not an answer
            except BaseException as err:  # noqa: BLE001 - handed to the request that waits
                error = Cancelled(job.reason or "cancelled") if job.cancelled else err
            finally:
                end, end_cpu = time.monotonic(), time.thread_time()
                job.worker_clock = None
                took = end - (job.started or end)
                with self._cond:
                    if job.cancelled:
                        self.cancelled += 1
                        after = max(0.0, end - max(job.cancelled_at or end, job.started or end))
                        self.abandoned_s += after
                        self.after_cancel.append(after)
                        if job.cpu_at_cancel is not None:
                            self.after_cancel_cpu.append(max(0.0, end_cpu - job.cpu_at_cancel))
                    else:
                        self.completed += 1
                        self.steps.extend(b - a for a, b in zip(job.ticks, job.ticks[1:]))
                        self.steps_cpu.extend(b - a for a, b in zip(job.tick_cpu, job.tick_cpu[1:]))
                        self._service_s = took if self._service_s is None else 0.7 * self._service_s + 0.3 * took
                    self._running = None
                    self._cond.notify_all()
            # Answered only once its slot is free: a client that sends its next request on the answer
            # must not find the queue still counting this one (a spurious 429 at limit 1).
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
