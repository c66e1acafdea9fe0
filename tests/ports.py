"""Runs of consecutive ports for `ramraft cluster`, which numbers its nodes'
ports from a base. Free when picked, so only candidates: a caller starts
again on new ones when a node finds its port taken (exit status 4)."""

from __future__ import annotations

import random
import socket


def free_port_runs(count: int, length: int) -> list[int]:
    """``count`` bases of ``length`` consecutive free ports each."""
    rng = random.Random()
    bases: list[int] = []
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        ports = range(base, base + length)
        if any(p in range(b, b + length) for b in bases for p in ports):
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        bases.append(base)
        if len(bases) == count:
            return bases
    raise AssertionError("no runs of free ports found")
