"""A rolling restart under load, as a StatefulSet rollout does it.

One node at a time, from the highest ordinal down: SIGTERM (the node hands
its leadership to a caught-up peer, lets its in-flight writes finish, exits 0),
start it again with the same data, wait until it is Ready (grpc.health.v1 ""
SERVING: knows the leader and has applied the commit index it knows: the
StatefulSet's readiness probe), then the next. Meanwhile `ramraft chaos`
writes with a 5 s deadline per operation, retries included.

Pass: no write failed or ended unknown, the history is linearizable and
nothing acknowledged was lost. The longest write pause (the longest time no
write was acknowledged during the rollout) is printed and written to
rolling.json in the test's tmp dir.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from ramraft.tools.history import load_history, longest_write_pause
from tests.chaos.cluster import LabCluster
from tests.chaos.netns import ChaosNet

WRITE_DEADLINE = 5.0
GRACE = 25.0  # terminationGracePeriodSeconds in k8s/statefulset.yaml


@pytest.mark.chaos
def test_rolling_restart_under_load_fails_no_write(lab_net: ChaosNet, tmp_path: Path) -> None:
    cluster = LabCluster(lab_net)
    history = tmp_path / "history.jsonl"
    steps = []
    try:
        cluster.start_all()
        cluster.wait_ready(timeout=90)
        cluster.start_workload(history, duration=3600, args=["--timeout", str(WRITE_DEADLINE)])
        time.sleep(3)
        rollout_start = time.monotonic()
        order = list(reversed(cluster.names))
        while order:
            name = order.pop(0)
            leader = cluster.leader()
            term = time.monotonic()
            code = lab_net.stop(name, timeout=GRACE)
            exited = time.monotonic()
            assert code == 0, f"{name} did not stop cleanly on SIGTERM: exit code {code}"
            cluster.start(name)
            ready = cluster.wait_ready([name], timeout=180)
            cluster.wait_ready(timeout=60)  # the rest too, before the next pod goes
            steps.append(
                {
                    "node": name,
                    "was_leader": name == leader,
                    "term": term,
                    "stop_seconds": round(exited - term, 3),
                    "ready_seconds": round(ready - exited, 3),
                }
            )
            time.sleep(2)
            if not order and not any(s["was_leader"] for s in steps):
                # Leadership moved to a restarted node by an election of its
                # own: restart the leader too, so the rollout covers a handover.
                order.append(cluster.leader() or cluster.names[0])
        rollout_end = time.monotonic()
        time.sleep(2)
        code, summary = cluster.finish_workload()
    finally:
        cluster.close()
    _, records = load_history(history)
    writes = [r for r in records if r.is_write and not r.final]
    bad = [r for r in writes if r.outcome != "ok"]
    pause = longest_write_pause(records, rollout_start, rollout_end)
    latency = max(r.complete - r.invoke for r in writes if r.complete is not None)
    result = {
        "steps": steps,
        "writes": len(writes),
        "writes_not_ok": len(bad),
        "longest_write_pause": round(pause.seconds, 3),
        "longest_write_pause_at": round(pause.start - rollout_start, 3),
        "max_write_latency": round(latency, 3),
        "summary": summary,
    }
    (tmp_path / "rolling.json").write_text(json.dumps(result, indent=2))
    sys.stdout.write(f"\nrolling restart: {json.dumps({**result, 'summary': None})}\n")
    assert len({s["node"] for s in steps}) == 3
    assert any(s["was_leader"] for s in steps), "the leader was never restarted"
    assert not bad, f"{len(bad)} writes failed during the rollout, e.g. {bad[:3]}"
    assert summary["linearizable"] is True and summary["lost_writes"] == 0
    assert code == 0
