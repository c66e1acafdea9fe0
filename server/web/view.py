"""What the web tier sees of its node: exactly what it reads, typed.

The node (node.py) builds one :class:`WebTierView` when it starts and hands
it to the web tier; the web tier imports nothing of node.py and reaches no
further than these fields. The metrics (metrics.py) see less still: the
runtime's reports and a count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from ramraft.server.blobs.manager import NodeBlobs
from ramraft.server.config import NodeLimits
from ramraft.server.hosting import HostedApp
from ramraft.server.logs import RateLimitedLog
from ramraft.server.machines.kv import KVMachine
from ramraft.server.runtime.node_api import NodeAPI
from ramraft.server.runtime.status import RuntimeReports
from ramraft.server.security.auth import InflightLimiter, TokenStore
from ramraft.server.security.budget import MemoryBudget
from ramraft.server.security.tls import TLSFiles
from ramraft.server.web.metrics import NodeMetrics


@dataclass(frozen=True)
class WebTierView:
    node_id: str
    started_at: float  # unix time the node started (uptime on the status page)
    limits: NodeLimits  # the HTTP body and connection limits
    reports: RuntimeReports  # status, members, leader changes
    api: NodeAPI  # the reads and writes the JSON API serves
    kv: KVMachine  # read directly: the web tier runs on the loop that applies
    metrics: NodeMetrics  # /metrics, and the rates on the status page
    tokens: TokenStore | None  # --auth-tokens; None: authentication is off
    limiter: InflightLimiter  # --max-inflight, shared with the gRPC port
    budget: MemoryBudget  # --max-inflight-bytes, shared with the gRPC port
    refusals: RateLimitedLog  # where refused requests are logged
    tls: TLSFiles | None  # HTTPS when set
    app: HostedApp | None  # --app: its pages go under /app/
    # A channel to a member over the peer port (with TLS, this node's
    # certificate says who asks): to ask the leader for its members' progress.
    peer_channel: Callable[[str], grpc.aio.Channel]
    blobs: NodeBlobs | None = None  # /v1/blobs, and ctx.blobs for the app's pages
