"""Reused threads for short-lived actors: a job's coordinator and its stage actors.

pykka starts one new thread per ``ThreadingActor`` and lets it end with the
actor. briefd starts five actors per job (a coordinator and one per stage), and
on this project's 2-core machines a thread's start and end cost about 0.3 ms of
CPU each time, about a fifth of briefd's CPU per call at 100 jobs, K=16.
:class:`PooledThreadingActor` runs its actor loop on a thread of the process's
one :class:`ThreadPool` instead: an actor still has its own thread for its whole
life (so a stage blocked in its HTTP call blocks nothing else, and the number
of threads follows the number of live actors, as before), but when the actor
ends the thread waits for the next actor rather than exiting. Measured at 100
jobs K=16 (7 interleaved rounds): 4.29 -> 3.41 ms of CPU per call, makespan
2.15 -> 2.05 s.

The pool never makes an actor wait: with no idle thread a new one starts. An
idle thread exits after :data:`IDLE_S`, so a burst's threads do not stay. Pooled
threads are daemon threads: an idle one must not keep the process alive. The
actors on them are per-job actors that their owner (``Pipeline``, the daemon's
root) stops before it exits; the long-lived actors (limiter, metrics, journal)
keep pykka's own non-daemon threads, which is what holds a process open until
it is closed.

Both classes here override hooks of pykka 4 that are not public API,
``ThreadingActor._start_actor_loop`` and ``_create_actor_inbox`` (pykka is pinned
``>=4.1,<5`` in ``pyproject.toml``); ``tests/test_threads.py`` checks the reuse,
the inbox's order and teardown, and that pykka's lifecycle (``on_start``,
``on_stop``, ``on_failure``) is unchanged on a reused thread.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import pykka
from loguru import logger
from pykka._actor import ActorInbox  # the inbox protocol (pykka 4 exports no public name)

IDLE_S = 30.0
"""How long an idle pooled thread waits for the next actor before it exits."""


class _Worker:
    """One pooled thread's hand-off: the next function to run, and a lock released for it."""

    __slots__ = ("fn", "name", "wake")

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        self.fn: Callable[[], object] | None = fn
        self.name = name
        self.wake = threading.Lock()
        self.wake.acquire()  # held: released once per hand-off


class ThreadPool:
    """Threads that run one function after another; a new one when none is idle."""

    def __init__(self, idle_s: float = IDLE_S) -> None:
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._became_idle = threading.Condition(self._lock)
        self._idle: list[_Worker] = []
        self.started = 0  # threads started over the pool's life (for tests and benchmarks)
        self.ran = 0  # functions handed to it

    def run(self, fn: Callable[[], object], name: str) -> None:
        """Run ``fn()`` on an idle thread, or on a new one; never waits for a thread."""
        with self._lock:
            self.ran += 1
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                self.started += 1
        if worker is not None:
            worker.fn, worker.name = fn, name
            worker.wake.release()
            return
        worker = _Worker(fn, name)
        threading.Thread(target=self._loop, args=(worker,), name=name, daemon=True).start()

    def idle(self) -> int:
        """Threads waiting for work now."""
        with self._lock:
            return len(self._idle)

    def wait_idle(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` threads are idle (False after ``timeout`` s)."""
        with self._became_idle:
            return self._became_idle.wait_for(lambda: len(self._idle) >= count, timeout)

    def _loop(self, worker: _Worker) -> None:
        me = threading.current_thread()
        while True:
            fn, worker.fn = worker.fn, None
            if fn is not None:
                me.name = worker.name
                try:
                    fn()
                except BaseException as err:  # an actor loop handles its own; keep the thread
                    logger.opt(exception=err).error("pooled thread: {!r} escaped", err)
                me.name = "briefd-idle"
            with self._lock:
                self._idle.append(worker)
                self._became_idle.notify_all()
            if worker.wake.acquire(timeout=self._idle_s):
                continue
            with self._lock:
                if worker in self._idle:  # nobody took it: leave
                    self._idle.remove(worker)
                    return
            worker.wake.acquire()  # taken just as the wait ended: its hand-off is coming

    def _after_fork(self) -> None:
        """A forked child has none of the parent's threads, and maybe a held lock."""
        self._lock = threading.Lock()
        self._became_idle = threading.Condition(self._lock)
        self._idle = []


_POOL = ThreadPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL._after_fork)


def pool() -> ThreadPool:
    """The process's pool (for tests and benchmarks)."""
    return _POOL


class LeanThreadingActor(pykka.ThreadingActor):
    """A ``pykka.ThreadingActor`` whose inbox is a ``queue.SimpleQueue``.

    pykka's default inbox is a ``queue.Queue``, written in Python over a condition
    variable; every ``tell`` and every wake-up pays for it. ``SimpleQueue`` is the
    C-implemented FIFO with the ``put``/``get``/``empty`` pykka's ``ActorInbox``
    protocol asks for (and nothing pykka uses is missing). A message from one actor
    to another went from about 20 to 11 us of CPU (a ping-pong of 20,000 tells);
    each briefd call is about ten of them.
    """

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return queue.SimpleQueue()


class PooledThreadingActor(LeanThreadingActor):
    """A lean actor whose loop runs on a reused thread (see the module)."""

    def _start_actor_loop(self) -> None:
        _POOL.run(self._pooled_loop, type(self).__name__)

    def _pooled_loop(self) -> None:
        try:
            self._actor_loop()
        finally:
            self.on_exit()

    def on_exit(self) -> None:
        """Hook: the actor's loop has ended, however it ended, and its thread is leaving it.

        Called on the actor's thread after pykka's last hook (``on_stop``, ``on_failure``,
        or none when ``on_start`` raised), so a message told here comes after anything
        the actor told before. Must not raise or block.
        """
