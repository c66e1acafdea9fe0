"""bench.profile_leader's reading of py-spy's raw stacks (the part that needs
no cluster and no py-spy): samples go to the innermost frame's bucket and
to the first phase whose frame is on the stack, so each table adds up to
all the samples; and a thread's CPU comes from /proc."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bench.profile_leader import summarize_profile, thread_cpu, thread_split

RAW = """\
_run_module_as_main (<frozen runpy>:198);run (asyncio/runners.py:190);StreamServer._write_all (ramraft/server/rpc/streams.py:338) 40
_run_module_as_main (<frozen runpy>:198);StreamServer._read_all (ramraft/server/rpc/streams.py:307);StreamGate.admit (ramraft/server/security/auth.py:316) 2
_run_module_as_main (<frozen runpy>:198);StreamServer._serve (ramraft/server/rpc/streams.py:307);NodeAPI.write (ramraft/server/runtime/node_api.py:102) 8
_run_module_as_main (<frozen runpy>:198);BaseEventLoop._run_once (asyncio/base_events.py:1922);EpollSelector.select (selectors.py:468) 30
Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81);datasync (ramraft/server/storage/_fs.py:14) 12
Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982) 8
"""  # noqa: E501


def test_samples_are_split_by_bucket_and_by_phase(tmp_path: Path) -> None:
    raw = tmp_path / "leader.txt"
    raw.write_text(RAW)
    total, own, phases = summarize_profile(raw)
    assert total == 100
    assert sum(own.values()) == sum(phases.values()) == total
    assert own["KV servicer (rpc/services.py, rpc/streams.py)"] == 40
    assert own["gatekeeper: auth + limiter"] == 2
    assert own["storage (WAL, fsync)"] == 12
    assert own["threads, queues, selectors"] == 30 + 8
    assert phases["writing responses (context.write)"] == 40
    assert phases["auth + limiter per request (StreamGate.admit)"] == 2
    assert phases["per request: task, handler, NodeAPI.write, reply"] == 8
    assert phases["event loop itself (select, handles)"] == 30
    assert phases["disk thread: WAL write + fsync"] == 12
    assert phases["gRPC poller thread (C core)"] == 8


def test_thread_cpu_tells_the_event_loop_thread_from_the_others() -> None:
    pid = os.getpid()
    before = thread_cpu(pid)
    assert pid in before  # the main thread's id is the process id

    spun = threading.Event()
    release = threading.Event()

    def spin() -> None:
        end = time.thread_time() + 0.3  # this thread's own CPU
        while time.thread_time() < end:
            pass
        spun.set()
        release.wait(30)

    worker = threading.Thread(target=spin)
    worker.start()
    assert spun.wait(60)
    split = thread_split(pid, before, thread_cpu(pid))  # while the worker is alive
    release.set()
    worker.join()
    assert split["other threads (gRPC poller, disk, executor)"] >= 0.2
    assert split["event-loop thread"] >= 0
