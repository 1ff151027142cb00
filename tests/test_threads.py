"""Pooled threads for per-job actors (briefd.threads): reused, never a wait, lifecycle intact."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

import briefd
from briefd.threads import LeanThreadingActor, PooledThreadingActor, ThreadPool, pool

WAIT_S = 10.0


class _Echo(PooledThreadingActor):
    """Answers with the thread it runs on; records its own lifecycle hooks (per actor, so a
    previous actor's late ``on_exit`` cannot show up in another's record)."""

    def __init__(
        self, hooks: list[str] | None = None, exited: threading.Event | None = None
    ) -> None:
        super().__init__()
        self.hooks: list[str] = [] if hooks is None else hooks
        self.exited = threading.Event() if exited is None else exited

    def on_start(self) -> None:
        self.hooks.append("start")

    def on_stop(self) -> None:
        self.hooks.append("stop")

    def on_failure(self, *args: Any) -> None:
        self.hooks.append("failure")

    def on_exit(self) -> None:
        self.hooks.append("exit")
        self.exited.set()

    def on_receive(self, message: Any) -> Any:
        if message == "raise":
            raise RuntimeError("a bug in a handler")
        if isinstance(message, threading.Barrier):
            message.wait(WAIT_S)  # every actor must be running at once for this to pass
        return threading.get_ident()


def test_actors_one_after_another_reuse_idle_threads() -> None:
    """Twenty actors started and stopped in turn start no thread while one is idle."""
    _Echo.start().stop(timeout=WAIT_S)
    started_before = pool().started
    for _ in range(20):
        assert pool().wait_idle(1, WAIT_S), "the last actor's thread never came back"
        ref = _Echo.start()
        assert ref.ask("which", timeout=WAIT_S)
        ref.stop(timeout=WAIT_S)
        assert ref.actor_stopped.wait(WAIT_S)
    assert pool().started == started_before, "a thread was started though one was idle"


def test_live_actors_each_have_a_thread_so_none_waits_for_another() -> None:
    """Twelve actors blocked at once (a barrier of twelve) all run: the pool grows."""
    barrier = threading.Barrier(12)
    refs = [_Echo.start() for _ in range(12)]
    try:
        futures = [r.ask(barrier, block=False) for r in refs]
        idents = {f.get(timeout=WAIT_S) for f in futures}
        assert len(idents) == 12
    finally:
        for r in refs:
            r.stop(timeout=WAIT_S)


def test_pykka_lifecycle_is_unchanged_on_a_reused_thread() -> None:
    """on_start, on_failure (a handler's exception), on_stop: as on pykka's own threads;
    then on_exit, the pool's own hook, last."""
    warm = _Echo.start()
    warm.stop(timeout=WAIT_S)
    hooks: list[str] = []
    exited = threading.Event()
    ref = _Echo.start(hooks, exited)
    ref.ask("which", timeout=WAIT_S)
    ref.tell("raise")  # pykka: on_failure, then the actor stops
    assert exited.wait(WAIT_S)
    assert hooks == ["start", "failure", "exit"]
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("which")
    hooks2: list[str] = []
    exited2 = threading.Event()
    again = _Echo.start(hooks2, exited2)  # the thread is free for the next actor
    assert again.ask("which", timeout=WAIT_S)
    again.stop(timeout=WAIT_S)
    assert exited2.wait(WAIT_S)
    assert hooks2 == ["start", "stop", "exit"]


class _CannotStart(_Echo):
    def on_start(self) -> None:
        raise RuntimeError("no start")


def test_on_exit_follows_even_a_failed_on_start() -> None:
    """pykka calls neither on_failure nor on_stop when on_start raises: on_exit still comes."""
    hooks: list[str] = []
    exited = threading.Event()
    ref = _CannotStart.start(hooks, exited)
    assert exited.wait(WAIT_S)
    assert ref.actor_stopped.is_set()
    assert hooks == ["exit"]


def test_an_idle_thread_leaves_after_its_idle_time() -> None:
    """A pool's thread waits ``idle_s`` for more work, then exits (a burst does not stay)."""
    small = ThreadPool(idle_s=0.05)
    ran = threading.Event()
    threads: list[threading.Thread] = []

    def work() -> None:
        threads.append(threading.current_thread())
        ran.set()

    small.run(work, "briefd-test")
    assert ran.wait(WAIT_S)
    threads[0].join(WAIT_S)
    assert not threads[0].is_alive()
    assert small.idle() == 0 and small.started == 1


def test_a_function_that_raises_does_not_cost_the_thread() -> None:
    """What escapes a pooled function is logged; the thread takes the next one."""
    small = ThreadPool(idle_s=WAIT_S)
    seen: list[int] = []
    done = threading.Event()

    def boom() -> None:
        seen.append(threading.get_ident())
        raise RuntimeError("escaped")

    def after() -> None:
        seen.append(threading.get_ident())
        done.set()

    small.run(boom, "briefd-test")
    assert small.wait_idle(1, WAIT_S), "the thread died with the function"
    small.run(after, "briefd-test")
    assert done.wait(WAIT_S)
    assert seen[0] == seen[1] and small.started == 1


def test_a_pipeline_of_many_jobs_starts_few_threads(
    sim: Any, make_settings: Any, make_job: Any
) -> None:
    """Thirty jobs (150 actors: a coordinator and four stages each), run five at a time,
    start far fewer than 150 threads."""
    before, ran_before = pool().started, pool().ran
    with briefd.Pipeline(make_settings(max_concurrent=2, max_active_jobs=5)) as pipeline:
        futures = [pipeline.submit(make_job(f"t-{i}")) for i in range(30)]
        assert all(f.get(timeout=120).status == "succeeded" for f in futures)
    assert pool().ran - ran_before == 30 * 5, "every per-job actor runs on the pool"
    # At most two windows of actors are alive at once (a finished job's five actors are
    # still leaving while its successor's start): 50 threads at the most, not 150.
    assert pool().started - before <= 2 * 5 * 5, pool().started - before


class _Gate(LeanThreadingActor):
    """Blocks on an event in its first message, so later messages queue behind it."""

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, threading.Event):
            message.wait(WAIT_S)
        return message


def test_the_lean_inbox_keeps_pykkas_order_and_its_teardown() -> None:
    """FIFO order, and asks still queued when the actor stops fail with ActorDeadError
    (pykka drains the inbox with ``empty``/``get``, which ``SimpleQueue`` has)."""
    gate = threading.Event()
    ref = _Gate.start()
    assert type(ref.actor_inbox).__name__ == "SimpleQueue"
    blocked = ref.ask(gate, block=False)
    answers = [ref.ask(n, block=False) for n in range(5)]
    gate.set()
    assert blocked.get(timeout=WAIT_S) is gate
    assert [a.get(timeout=WAIT_S) for a in answers] == [0, 1, 2, 3, 4]
    gate2 = threading.Event()
    blocked = ref.ask(gate2, block=False)
    ref.stop(block=False)  # queued behind the blocked message
    late = ref.ask("late", block=False)  # still alive: blocked on gate2
    gate2.set()
    assert blocked.get(timeout=WAIT_S) is gate2
    assert ref.actor_stopped.wait(WAIT_S)
    with pytest.raises(pykka.ActorDeadError):
        late.get(timeout=WAIT_S)
