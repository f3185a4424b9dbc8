"""Is the broker a consumer just fetched from still the incarnation it started on?

An embedded broker (tansu, memory storage) restarts empty on the same host:port under a new
cluster id. A kafka-python consumer that outlives the restart reconnects and goes on
fetching at its old positions, and it can do so *before* its metadata refresh (the only
thing that updates `cluster_id`) succeeds: the refresh backs off while the broker is down,
the fetcher's reconnect does not wait for it. Measured with kafka-python 3.0.12 and tansu
0.6.0 (tests/integration/test_broker_incarnation.py): after a 1-3 s outage, poll() returned
the new broker's records from the old position on while `cluster_id` still named the old
incarnation, for up to ~3 s. A consumer loop that compares `cluster_id` after each poll
then takes those records for the old incarnation's: the new broker's records below the
old position are skipped, and later ones are projected ahead of them (out of run order)
under the old incarnation's checkpoint. Once any producer (the SDK's resend window,
another client, the analysis service's findings) has filled the new log past the old
position, that is what happens; before that, the fetch is out of range and resets.

A dropped connection flags the metadata for refresh (`need_update`) until a refresh
succeeds, and a refresh that succeeds after the old broker died can only have been
answered by the new one. So records polled while no refresh is pending come from the
incarnation `cluster_id` names; records polled while one is pending must wait for it.
"""

from __future__ import annotations

import time
from typing import Any


def metadata_settled(cluster: Any, timeout_s: float) -> bool:
    """Whether `cluster_id` is known to be current, waiting up to `timeout_s` for a pending refresh.

    `cluster` is kafka-python's ClusterMetadata (`consumer._client.cluster`,
    `producer._metadata`). Call it after a poll that returned records and before using them,
    then compare `cluster.cluster_id` with the incarnation the positions belong to. False
    (the refresh failed or is still pending): the records' incarnation is unknown; drop
    them and reload positions, as for a changed cluster id. Blocks: call it off the event loop.
    """
    if not cluster.need_update:
        return True
    future = cluster.request_update()  # the pending refresh (or a new one)
    deadline = time.monotonic() + timeout_s
    while not future.is_done and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(future.is_done and future.succeeded())
