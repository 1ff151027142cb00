"""Two daemons on one PostgreSQL share one outbox: every delivery arrives once, from
whichever daemon claimed it (``FOR UPDATE SKIP LOCKED``), signed with the shared secret."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from daemon_helpers import Daemon, make_job, wait_for
from webhook_receiver import Receiver, new_secret

from briefd.messages import JobStatus
from briefd.sim.server import SimServer


def test_two_daemons_deliver_each_webhook_once(
    sim: SimServer, pg_url: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    secret = new_secret()
    with Receiver(secret) as receiver:
        pair = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            d = Daemon(
                tmp_path / name,
                sim.base_url,
                database_url=pg_url,
                webhook_secret=secret,
                webhook_url=receiver.url,
                webhook_allow_private="true",
            )
            daemons.append(d.start())
            pair.append(d)
        n = 16
        ids = [f"cl-{i}" for i in range(n)]
        hooked = {f"cl-{i}" for i in range(0, n, 4)}
        clients = [d.client() for d in pair]
        for i, job_id in enumerate(ids):
            job = make_job(job_id)
            if job_id in hooked:  # its own webhook, every stage's success too
                job["webhook"] = {
                    "url": receiver.url + "?job=" + job_id,
                    "events": ["StageSucceeded", "JobCompleted"],
                }
            clients[i % 2].submit(job)
        for job_id in ids:
            assert clients[0].result(job_id, timeout=60).status is JobStatus.SUCCEEDED
        expected = n + 4 * len(hooked)
        got = receiver.wait(expected, 30)
        assert len(got) == expected, (len(got), expected)
        per_id = Counter(r.id for r in got)
        assert max(per_id.values()) == 1, [i for i, c in per_id.items() if c > 1]
        assert all(r.verified for r in got)

        def senders() -> Counter[str]:
            return Counter(
                e["delivery_id"]
                for d in pair
                for e in d.events("WebhookAttempted")
                if e["outcome"] == "delivered"
            )

        assert wait_for(lambda: len(senders()) == expected, 10), senders()
        assert set(senders()) == set(per_id) and max(senders().values()) == 1
        # Either daemon shows any job's deliveries (the rows are the cluster's).
        shown = wait_for(
            lambda: {w.state for w in clients[1].status("cl-0").webhooks} == {"delivered"}, 10
        )
        assert shown and len(clients[1].status("cl-0").webhooks) == 5
        for c in clients:
            c.close()
