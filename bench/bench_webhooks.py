"""The issue's webhook target: kill -9 with 50 deliveries pending, none lost after restart.

Run: ``python bench/bench_webhooks.py [--deliveries 50] [--rounds 3]``.

Each round: a ``briefd serve`` (``tests/daemon_helpers.py``) against the in-process
simulator (instant answers), with ``BRIEFD_WEBHOOK_URL`` pointing at a receiver that is
down (nothing listens: connections refused) and a short retry schedule. ``--deliveries``
jobs are submitted; once every one's ``JobCompleted`` delivery is in the outbox with at
least one failed attempt, the daemon is killed with SIGKILL, started again on the same data
dir, and the receiver comes up. It prints, per round: deliveries expected, received, distinct
``webhook-id``s, duplicates, signatures valid (``standardwebhooks.Webhook.verify``), ids the
same as before the kill, and seconds from the receiver's return to the last delivery; then
the medians and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemon_helpers import Daemon, journal_rows, make_job, wait_for
from webhook_receiver import Receiver, free_port, new_secret

from briefd.sim.server import SimProfile, SimServer


def one_round(n: int, sim: SimServer, tmp: Path) -> dict[str, Any]:
    secret = new_secret()
    receiver = Receiver(secret, port=free_port())
    d = Daemon(
        tmp,
        sim.base_url,
        webhook_secret=secret,
        webhook_url=receiver.url,
        webhook_allow_private="true",
        webhook_retry_initial_s=0.5,
        webhook_retry_max_s=2.0,
        max_concurrent=8,
    )
    try:
        d.start()
        with d.client() as client:
            for i in range(n):
                client.submit(make_job(f"bench-{i}"))

        def rows() -> list[tuple[object, ...]]:
            return journal_rows(d.data_dir, "SELECT id, state, attempts FROM webhook_outbox")

        if not wait_for(lambda: len(rows()) == n and all(r[2] >= 1 for r in rows()), 120):
            raise SystemExit(f"deliveries not all pending-and-tried in 120 s: {len(rows())}")
        before = {str(r[0]) for r in rows()}
        pending = sum(1 for r in rows() if r[1] == "pending")
        d.kill()
        d.start()
        receiver.up()
        back = time.monotonic()
        got = receiver.wait(n, 120)
        took = time.monotonic() - back
        ids = [r.id for r in got]
        return {
            "expected": n,
            "pending_at_kill": pending,
            "received": len(got),
            "distinct": len(set(ids)),
            "duplicates": len(ids) - len(set(ids)),
            "signatures_valid": sum(r.verified for r in got),
            "same_ids": set(ids) == before,
            "seconds_to_all": round(took, 2),
        }
    finally:
        receiver.down()
        d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = []
    with SimServer(SimProfile(scale=0.0)) as sim, tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            folder = Path(tmp) / f"round-{k}"
            folder.mkdir()
            result = one_round(args.deliveries, sim, folder)
            results.append(result)
            print(f"round {k + 1}: {result}", flush=True)
    lost = sum(int(r["expected"]) - int(r["distinct"]) for r in results)
    print(
        f"target: kill -9 with {args.deliveries} pending -> all arrive; lost {lost} in "
        f"{args.rounds} rounds; duplicates {sum(int(r['duplicates']) for r in results)}; "
        f"invalid signatures "
        f"{sum(int(r['received']) - int(r['signatures_valid']) for r in results)}; "
        "median seconds from the receiver's return to the last delivery "
        f"{statistics.median(float(r['seconds_to_all']) for r in results):.2f}; "
        f"load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
