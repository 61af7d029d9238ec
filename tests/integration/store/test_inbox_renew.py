"""Inbox.renew on both backends: a holder extends its lease, nobody else can, and a renewed
batch is not claimable until the renewed lease runs out."""

from __future__ import annotations

from datetime import timedelta

from monitor.store.repository import Repository
from tests.integration.store.conftest import T0, make_record

LEASE = timedelta(seconds=30)


def test_renew_extends_only_the_holders_lease(repo: Repository) -> None:
    repo.enqueue([make_record(i) for i in range(3)])
    held = repo.claim("a", limit=10, lease=LEASE, now=T0)
    ids = [entry.id for entry in held]
    assert len(ids) == 3
    assert repo.inbox.renew(ids, "a", lease=LEASE, now=T0 + timedelta(seconds=20)) == 3
    assert repo.inbox.renew(ids, "b", lease=LEASE, now=T0 + timedelta(seconds=20)) == 0
    # Past the first lease, within the renewed one: nothing to claim.
    assert repo.claim("b", limit=10, lease=LEASE, now=T0 + timedelta(seconds=40)) == []
    taken = repo.claim("b", limit=10, lease=LEASE, now=T0 + timedelta(seconds=51))
    assert [entry.id for entry in taken] == ids
    assert repo.inbox.renew(ids, "a", lease=LEASE, now=T0 + timedelta(seconds=52)) == 0
    assert repo.ack(ids, "a") == 0 and repo.ack(ids, "b") == 3
