"""``briefd serve``: the long-running daemon. It never loses an acknowledged job.

One process holds one rate limiter and one metrics actor (the token cap is
daemon-wide), a journal (:mod:`briefd.store.sqlite`, SQLite in ``BRIEFD_DATA_DIR``),
a root actor that admits jobs and runs a coordinator per active job
(:mod:`briefd.actors.root`), and the HTTP API (:mod:`briefd.daemon.http_api`) on a
loopback socket.

Signals are taken by :func:`signal.set_wakeup_fd` and handled in the main
thread's loop, never inside a handler (a handler that logs or takes a lock can
deadlock the thread it interrupted):

* SIGTERM / SIGINT: stop accepting jobs, let calls in flight finish within
  ``BRIEFD_GRACE_S``, put unfinished runs back in the journal's queue, exit 0.
  A second one exits at once; the journal makes the rest resumable.
* SIGHUP: re-read the settings; the token cap, retries, timeouts and admission
  limits apply live, without dropping a job. The pipelines folder is read again
  too (a broken file: its mistakes logged, the pipelines kept); a running or
  queued job keeps the pipeline version it was accepted with.
* SIGUSR1: log every thread's stack.

The same loop watches the actors (pykka has no supervision): a dead rate limiter
is restarted with its leases; a SystemExit in a stage or a dead root, journal
or metrics actor ends the process with :data:`EXIT_FATAL`, the journal flushed.

Under systemd (``Type=notify``) it says ``READY=1`` once it listens, pings
``WATCHDOG=1`` while the root actor answers, and ``STOPPING=1`` on the way out.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import IO, Any, cast

import pykka
from loguru import logger

import briefd
from briefd.actors import CoordinatorActor, MetricsActor, StageActor
from briefd.actors.journal import JournalActor, journal_observer
from briefd.actors.limiter_supervisor import LimiterSupervisor, cluster_limiter
from briefd.actors.metrics import metrics_observer
from briefd.actors.root import RootActor
from briefd.actors.stage import with_fatal_hook
from briefd.cluster.claims import ClaimKeeper, new_daemon_id, node_of
from briefd.config import ConfigError, Settings
from briefd.costs import load_prices
from briefd.daemon.backend import ASK_TIMEOUT_S, DaemonBackend
from briefd.daemon.http_api import ApiServer, bind_loopback
from briefd.daemon.http_events import EventStreams
from briefd.daemon.http_origin import FrontSettings
from briefd.daemon.prometheus import MetricsExporter
from briefd.daemon.service import (
    dump_threads,
    ensure_token,
    lock_data_dir,
    sd_notify,
)
from briefd.daemon.stream_token import StreamTokens
from briefd.local.provider import Provider, open_provider
from briefd.messages import (
    CheckCancels,
    ClaimJobs,
    DaemonReloading,
    DaemonStarted,
    DaemonStopping,
    SetCapacity,
    Tick,
)
from briefd.ops.autorollback import breaker_from_settings
from briefd.ops.events import publish
from briefd.ops.logs import register_secret
from briefd.pipelines.registry import PipelineRegistry, reload_pipelines
from briefd.private import private_dir
from briefd.store import open_store, store_label
from briefd.store.base import ClaimStore
from briefd.store.events import EVENTS_CHANNEL
from briefd.telemetry import Telemetry, open_telemetry
from briefd.tenants.api import key_live
from briefd.tenants.auth import authenticator
from briefd.tenants.gate import TenantGate
from briefd.tenants.store import TenantStore
from briefd.webhooks.service import Webhooks

EXIT_FATAL = 70
"""Exit code when part of the actor system died under the daemon (EX_SOFTWARE): systemd's
``Restart=on-failure`` starts it again and the journal resumes the unfinished jobs."""
# fmt: off
LIVE_SETTINGS = (
    "max_concurrent", "retry_enabled", "max_retries", "timeout_ms", "connect_timeout_ms",
    "backoff_initial_s", "backoff_max_s", "retry_after_max_s", "rate_limit_cooldown",
    "reask_invalid_json", "max_active_jobs", "max_queued_jobs", "restart_budget", "grace_s",
    "max_job_cost_usd", "max_job_tokens", "daily_budget_usd",
)
# fmt: on
"""Settings SIGHUP applies: to the limiter at once, to runs that start afterwards."""


class Daemon(DaemonBackend):
    """The daemon's parts and their lifecycle; also the HTTP API's backend."""

    def __init__(self, settings: Settings, config_file: Path | None) -> None:
        self.settings = settings
        self._loaded = settings  # as read, before the provider filled in model/format
        self._config_file = config_file
        self._stopping = threading.Event()
        self._provider: Provider | None = None
        self._lock: IO[str] | None = None
        self._exit_code = 0
        self._fatal: BaseException | None = None  # set from a stage's thread
        self._exporter = MetricsExporter(self.figures)
        self.daemon_id: str | None = None  # with PostgreSQL: this daemon in the cluster
        self._listener: Any = None  # with PostgreSQL: LISTEN for the root's wake-ups
        self.telemetry: Telemetry | None = None  # OpenTelemetry, when OTEL_* asks for it

    # -- start -----------------------------------------------------------------------

    def start(self) -> None:
        """Build everything, resume unfinished jobs, listen; ConfigError on a bad set-up."""
        s = self.settings
        load_prices(s.prices)  # a bad price table stops the start, named (exit 2), first
        # Every pipeline a job may name, checked before anything is made (one line per
        # mistake, exit 2).
        self.registry = PipelineRegistry.load(s)
        self.pipeline = self.registry.default_spec
        front = FrontSettings.of(s)  # bad BRIEFD_ALLOWED_ORIGINS/_HOSTS: exit 2, named
        try:
            private_dir(s.data_dir)
        except OSError as err:
            raise ConfigError(f"BRIEFD_DATA_DIR {s.data_dir}: {err.strerror or err}") from None
        self._lock = lock_data_dir(s.data_dir)
        token = ensure_token(s.resolved_token_file())
        register_secret(token)
        breaker = breaker_from_settings(s)
        # First, before paying for anything: a damaged journal stops the start (exit 2).
        self.journal = open_store(s, self.pipeline, on_finished=self._notify_finished)
        self.journal.files.sweep()  # temporary files a crash left between write and rename
        self.journal.files.probe()  # an unwritable jobs/ shows on /healthz from the start
        sock = bind_loopback(s.listen)
        self.daemon_id = new_daemon_id(s.data_dir) if s.database_url is not None else None
        self.webhooks = Webhooks(  # a bad secret or BRIEFD_WEBHOOK_URL stops the start
            s, self.journal, own=[sock.getsockname()[:2]], owner=self.daemon_id or "local"
        )
        self._provider = open_provider(s, self.registry.stages)
        self.routing = self._provider.routing  # a job's models are checked against it
        self.settings = s = s.model_copy(
            update={
                "model": self._provider.model,
                "response_format": self._provider.response_format,
            }
        )
        self.metrics = MetricsActor.start()
        self.telemetry = open_telemetry(self._provider.routing, self.pipeline)
        traced = [self.telemetry] if self.telemetry is not None else []
        metrics_only = [metrics_observer(self.metrics)]
        self._provider.routing.breakers.on_change = lambda e: publish(e, metrics_only)
        claims: ClaimKeeper | None = None
        if s.database_url is not None:  # a cluster: one queue, one token budget
            assert self.daemon_id is not None
            store = cast(ClaimStore, self.journal)
            # The data dir is locked: claims under its node but another id are a dead
            # predecessor's (kill -9); lapse them so its jobs resume now, not in lease_s.
            if lapsed := store.release_predecessors(self.daemon_id, node_of(s.data_dir)):
                logger.info("{} job(s) of this data dir's previous daemon resume now", lapsed)
            claims = ClaimKeeper(store, self.daemon_id, lease_s=s.lease_s, poll_s=s.poll_s)
            self.limiter = cluster_limiter(  # no token for a job whose claim is unproven
                s,
                self.daemon_id,
                [metrics_observer(self.metrics)],
                gate=store.claim_valid,
                endpoints=self._provider.routing.limits(),
            )
        else:
            self.limiter = LimiterSupervisor(
                capacity=s.max_concurrent,
                observers=[metrics_observer(self.metrics)],
                adaptive=s.adaptive,
                rpm=s.rpm,
                tpm=s.tpm,
                endpoints=self._provider.routing.limits(),
            )
        self.tenants = TenantStore(s)  # keys and tenants, in the journal's database
        self.server = ApiServer(
            self,
            sock,
            token=token,
            max_body=s.max_body_bytes,
            streams=self._streams(token),
            auth=authenticator(s, token, self),
            front=front,
        )
        self.journal_ref = JournalActor.start(self.journal)
        self.root = RootActor.start(
            journal=self.journal,
            journal_ref=self.journal_ref,
            pipeline=self.pipeline,
            settings=s,
            base_url=self._provider.base_url,
            routing=self._provider.routing,
            limiter=self.limiter,
            observers=[metrics_observer(self.metrics), journal_observer(self.journal_ref), *traced],
            stage_actor_cls=with_fatal_hook(StageActor, self._on_fatal),
            breaker=breaker,
            claims=claims,
            registry=self.registry,
            tenants=TenantGate(self.tenants),
        )
        if s.database_url is not None:
            self._listen(s.database_url)
        self.webhooks.start()
        self.server.start()
        stats = self.root.proxy().stats().get(timeout=ASK_TIMEOUT_S)
        publish(
            DaemonStarted(
                url=self.server.url,
                pid=os.getpid(),
                version=briefd.__version__,
                resumed=stats.resumed,
                max_active_jobs=s.active_jobs,
                max_queued_jobs=s.max_queued_jobs,
                max_concurrent=s.max_concurrent,
                daemon_id=self.daemon_id,
            )
        )
        logger.info(
            "briefd listening on {} (data in {}; journal: {}{})",
            self.server.url,
            s.data_dir,
            store_label(s),
            f"; daemon {self.daemon_id}" if self.daemon_id else "",
        )
        if front.ui:
            logger.info("example page: {}/ui/ (paste the API token into it)", self.server.url)
        sd_notify(f"READY=1\nSTATUS=listening on {self.server.url}\nMAINPID={os.getpid()}")
        self._start_watchdog()

    def _listen(self, url: str) -> None:
        """Wake-ups from the database: a job submitted anywhere, a cancel of a job held here,
        a job ended by any daemon (its result waiters here). Reconnecting catches up by a claim."""
        from briefd.cluster.listen import Listener

        root = self.root

        def tell(message: Any) -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                root.tell(message)

        self._listener = Listener(
            url,
            {
                "briefd_jobs": lambda _: tell(ClaimJobs()),
                "briefd_cancel": lambda _: tell(CheckCancels()),
                "briefd_finished": lambda job_id: self.server.notify_finished(job_id),
                EVENTS_CHANNEL: lambda _: self.server.events_committed(),
            },
            on_connect=lambda: tell(ClaimJobs()),
            name="briefd-listen-jobs",
            bound_s=self.settings.db_timeout,
        ).start()

    def _streams(self, token: str) -> EventStreams:
        """The event streams: from the journal's event table, woken by its commits (and, in
        a cluster, by NOTIFY, with the poll as the safety net)."""
        s = self.settings
        return EventStreams(
            self.journal.event_log,
            self.journal.get,
            StreamTokens(token),
            poll_s=s.poll_s if s.database_url is not None else None,
            max_streams_per_token=s.max_streams_per_token,
            key_live=functools.partial(key_live, self.tenants),
        )

    def _notify_finished(self, job_id: str) -> None:
        """A job's terminal state is committed: wake the API's result waiters."""
        self.server.notify_finished(job_id)

    def _start_watchdog(self) -> None:
        usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
        if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
            return
        interval = int(usec) / 1e6 / 2

        def ping() -> None:
            pause = threading.Event()
            while not pause.wait(interval):
                try:  # alive: the root actor answers (a stop in progress is bounded by itself)
                    if not self._stopping.is_set():
                        self.root.proxy().stats().get(timeout=interval)
                except (pykka.Timeout, pykka.ActorDeadError):
                    logger.error("watchdog: the root actor does not answer; not pinging")
                    continue
                sd_notify("WATCHDOG=1")

        threading.Thread(target=ping, name="briefd-watchdog", daemon=True).start()

    # -- the main loop ---------------------------------------------------------------

    def run(self, wakeup: socket.socket) -> int:
        """Handle signals until a graceful stop completes (0), or a second stop signal."""
        stopper: threading.Thread | None = None
        while stopper is None or stopper.is_alive():
            ready, _, _ = select.select([wakeup], [], [], 0.2)
            if stopper is None and (dead := self._watch()) is not None:
                return self._die(dead)
            if not ready:
                continue
            with contextlib.suppress(BlockingIOError):
                for signum in wakeup.recv(64):
                    name = signal.Signals(signum).name
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        if stopper is not None:
                            logger.warning("{} again: stopping now; the journal has the rest", name)
                            logger.complete()
                            os._exit(128 + signum)
                        stopper = threading.Thread(
                            target=self._shutdown_or_report, args=(name,), name="briefd-shutdown"
                        )
                        stopper.start()
                    elif signum == signal.SIGHUP:
                        self.reload()
                    elif signum == signal.SIGUSR1:
                        dump_threads()
        return self._exit_code

    def _on_fatal(self, error: BaseException) -> None:
        """A stage's thread saw SystemExit/KeyboardInterrupt: the main loop exits (no blocking)."""
        self._fatal = error

    def _watch(self) -> str | None:
        """What died, if the daemon cannot go on (a SystemExit makes pykka stop every actor,
        leaving the API up over a dead system); a dead limiter is restarted instead."""
        if self._fatal is not None:
            return f"{self._fatal!r} in a stage"
        core: dict[str, pykka.ActorRef[Any]] = {
            "root": self.root,
            "journal": self.journal_ref,
            "metrics": self.metrics,
        }
        if dead := [name for name, ref in core.items() if not ref.is_alive()]:
            return f"the {dead[0]} actor died"
        self.limiter.check()
        if self.webhooks is not None:
            self.webhooks.check()
        return None

    def _die(self, what: str) -> int:
        """Exit now, :data:`EXIT_FATAL`: what the journal actor holds is written first."""
        logger.critical("{}: briefd exits; the journal resumes unfinished jobs at next start", what)
        self._stopping.set()
        sd_notify(f"STOPPING=1\nSTATUS=exiting: {what}")
        with contextlib.suppress(Exception):
            self.server.stop(2.0)
        _stop(self.journal_ref, 10.0)  # documents just paid for are in its inbox
        return EXIT_FATAL

    def _shutdown_or_report(self, signal_name: str) -> None:
        try:
            self.shutdown(signal_name)
        except Exception as err:  # exit all the same: the journal has every committed step
            logger.opt(exception=err).error("shutdown failed: {!r}", err)
            self._exit_code = 1

    # -- SIGHUP ----------------------------------------------------------------------

    def reload(self) -> None:
        """Apply the live settings of a fresh ``Settings.load``; log the ones needing a restart."""
        try:
            fresh = Settings.load(self._config_file)
        except ConfigError as err:
            logger.error("reload refused, settings unchanged: {}", err)
            return
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        old = self.settings
        changed = {
            name: f"{getattr(old, name)} -> {getattr(fresh, name)}"
            for name in LIVE_SETTINGS
            if getattr(old, name) != getattr(fresh, name)
        }
        needs_restart = sorted(
            name
            for name in type(fresh).model_fields
            if name not in LIVE_SETTINGS and getattr(fresh, name) != getattr(self._loaded, name)
        )
        registry = reload_pipelines(self.registry, self._loaded.pipeline)  # the folder too
        changed.update(self.registry.changes(registry))
        self.registry = registry
        publish(DaemonReloading(changed=changed, needs_restart=needs_restart))
        self.settings = old.model_copy(update={n: getattr(fresh, n) for n in LIVE_SETTINGS})
        if "max_concurrent" in changed:
            self.limiter.tell(SetCapacity(capacity=self.settings.max_concurrent))
        try:
            self.root.proxy().reload(self.settings, registry).get(timeout=ASK_TIMEOUT_S)
        except (pykka.Timeout, pykka.ActorDeadError) as err:
            logger.error("reload: the root actor did not take the settings: {!r}", err)
        sd_notify("READY=1")

    # -- SIGTERM ---------------------------------------------------------------------

    def shutdown(self, signal_name: str = "SIGTERM") -> None:
        """Drain, suspend, stop everything in order; each step bounded in time."""
        sd_notify("STOPPING=1")
        self._stopping.set()
        grace = self.settings.grace_s
        deadline = time.monotonic() + grace
        stats = self.root.proxy().stats().get(timeout=ASK_TIMEOUT_S)
        publish(
            DaemonStopping(
                signal=signal_name, grace_s=grace, active=stats.active, queued=stats.queued
            )
        )
        self.root.proxy().drain().get(timeout=ASK_TIMEOUT_S)
        in_flight = self._wait_calls(deadline)
        if in_flight:
            logger.warning(
                "grace period over: {} call(s) abandoned, run again at next start", in_flight
            )
        # Every stage has told its coordinator all it had (a no-op ask behind it).
        _barrier([r.ask(Tick(), block=False) for r in pykka.ActorRegistry.get_by_class(StageActor)])
        suspended = self.root.proxy().suspend().get(timeout=ASK_TIMEOUT_S)
        # Each coordinator handles what is in its inbox (publishing to the journal), then stops.
        coordinators = pykka.ActorRegistry.get_by_class(CoordinatorActor)
        _barrier([c.stop(block=False) for c in coordinators], 5.0)
        self.server.stop()
        if self.webhooks is not None:
            self.webhooks.stop()  # attempts on the wire are made again at the next start
        if self._listener is not None:
            self._listener.stop()
        _stop(self.root, 5.0)  # its last FinishJob tells go to the journal actor...
        _stop(self.journal_ref, 30.0)  # ...which writes everything in its inbox first
        self.journal.close()
        self.tenants.close()
        self.limiter.stop(2.0)
        _stop(self.metrics, 2.0)
        pykka.ActorRegistry.stop_all(block=False)
        if self._provider is not None:
            self._provider.close()
        if self.telemetry is not None:  # the traces of jobs that ended go out now
            self.telemetry.shutdown()
        logger.info(
            "briefd stopped: {} unfinished job(s) will resume at next start", len(suspended)
        )

    def _wait_calls(self, deadline: float) -> int:
        """Wait until no token is leased (no call in flight) or ``deadline``; calls left."""
        idle = threading.Event()
        while True:
            in_use = int(self.limiter.proxy().stats().get(timeout=ASK_TIMEOUT_S).in_use)
            if in_use == 0 or time.monotonic() >= deadline:
                return in_use
            idle.wait(0.05)

    def abort(self) -> None:
        """Undo a failed :meth:`start` (no journal writes are pending)."""
        if self._listener is not None:
            self._listener.stop()
        pykka.ActorRegistry.stop_all(block=True, timeout=5.0)
        if self._provider is not None:
            self._provider.close()
        if self.telemetry is not None:
            self.telemetry.shutdown()

    # -- the HTTP API's backend ------------------------------------------------------


def _stop(ref: pykka.ActorRef[Any], timeout_s: float) -> None:
    with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
        ref.stop(block=True, timeout=timeout_s)


def _barrier(futures: list[pykka.Future[Any]], timeout_s: float = 1.0) -> None:
    """Wait for each future until a shared deadline; late or dead ones are let go."""
    deadline = time.monotonic() + timeout_s
    for future in futures:
        with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
            future.get(timeout=max(0.01, deadline - time.monotonic()))
