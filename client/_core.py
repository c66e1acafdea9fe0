"""What the sync and the asyncio client share: endpoints, sessions, the retry
policy, request building and result types. No I/O here: the two clients run
the same decisions with blocking or awaiting calls around them.

Retry rules, for every call:
- The overall deadline (``timeout``) covers every attempt and every pause.
- UNAVAILABLE (node down, no leader, no quorum) moves to the next endpoint
  and tries again. So does CANCELLED: the client never cancels a call it
  still waits for, so it comes from a node that is stopping (gRPC cancels
  the calls it has not finished when its grace period ends) -- for a write,
  like UNAVAILABLE, "may or may not have been applied", and the retry
  carries the same session. Each endpoint is tried once without pausing; after a full
  round the client pauses, with exponential back-off and jitter.
- A leader hint (trailing metadata ``ramraft-leader: host:port``) makes that
  address the next endpoint to try, without pausing.
- With ``attempt_timeout``, an attempt that times out while the overall
  deadline has time left counts as UNAVAILABLE (a hung or paused node).
- RESOURCE_EXHAUSTED (a node over its in-flight limits; the request was
  refused before anything was proposed) moves to the next endpoint after a
  back-off pause; a request over the server's message size is final.
- Any other error is final and maps to an exception in client.errors
  (UNAUTHENTICATED and PERMISSION_DENIED included: retrying cannot help).
- A write carries the same Session (client id, sequence) on every attempt,
  so the cluster applies it at most once.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import grpc

from ramraft.client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    RamraftError,
    ResourceExhausted,
    Unavailable,
    error_for_status,
)
from ramraft.proto import kv_pb2

# The library logs through the standard logging module, as libraries do: the
# application decides where records go (logging.getLogger("ramraft.client")).
# The NullHandler keeps an application that configured nothing silent;
# without one, logging's last-resort handler prints warnings to stderr.
log = logging.getLogger("ramraft.client")
log.addHandler(logging.NullHandler())

DEFAULT_TIMEOUT: Final = 5.0
# How key-value calls travel: multiplexed over one KV.Stream per node
# (client/_stream.py), or one unary call each. The environment variable sets
# the default for clients that do not choose (and so for the command line).
TRANSPORTS: Final = ("stream", "unary")
TRANSPORT_ENV: Final = "RAMRAFT_TRANSPORT"
LEADER_METADATA_KEY: Final = "ramraft-leader"
# The largest message the client accepts or sends (range pages, big values).
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
# Channel options: reconnect quickly to a node that comes back (gRPC's default
# back-off grows to two minutes, during which the channel fails every call).
CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# A hinted address that failed is ignored for this long (it may be a name
# that only resolves inside the cluster's network).
BAD_HINT_SECONDS: Final = 30.0
# How long a node that does not serve KV.Stream gets unary calls only, before
# the client tries a stream again (the node may have been upgraded).
UNSUPPORTED_SECONDS: Final = 60.0

Consistency = kv_pb2.Consistency
LINEARIZABLE: Final = kv_pb2.LINEARIZABLE
SERIALIZABLE: Final = kv_pb2.SERIALIZABLE

_ENDPOINT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


def parse_endpoints(endpoints: str | Iterable[str]) -> list[str]:
    """``"h1:p1,h2:p2"`` or a list of ``"host:port"`` -> a list without
    duplicates, in order. Raises ValueError naming the bad entry."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise TypeError(f"endpoint must be a string, not {type(raw).__name__}")
        endpoint = raw.strip()
        if not endpoint:
            continue
        match = _ENDPOINT.match(endpoint)
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise ValueError(f"invalid endpoint {endpoint!r}: expected HOST:PORT")
        if endpoint not in result:
            result.append(endpoint)
    if not result:
        raise ValueError("no endpoints given")
    return result


# The longest timeout a call takes (about 31 years): a longer one (or
# infinity, for "no deadline") overflows the waits it becomes (a stream
# request's timeout_ms, a lock's timeout, grpc's deadline).
MAX_TIMEOUT: Final = 1e9


def check_timeout(timeout: float, name: str = "timeout") -> float:
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise ValueError(
            f"{name} must be a positive number of seconds (at most {MAX_TIMEOUT:g}), "
            f"not {timeout!r}"
        )
    return float(timeout)


def check_transport(transport: str | None) -> str:
    """``transport``, or the default (RAMRAFT_TRANSPORT, else "stream")."""
    source = "transport"
    if transport is None:
        transport = os.environ.get(TRANSPORT_ENV, "").strip().lower() or TRANSPORTS[0]
        source = TRANSPORT_ENV
    if transport not in TRANSPORTS:
        raise ValueError(f"{source} must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    return transport


def check_consistency(consistency: int) -> kv_pb2.Consistency.ValueType:
    if consistency not in (LINEARIZABLE, SERIALIZABLE):
        raise ValueError(f"unknown consistency {consistency!r}")
    return kv_pb2.Consistency.ValueType(consistency)


# The ranges of the proto fields a caller's integers go into.
INT64: Final = (-(2**63), 2**63 - 1)
UINT32: Final = (0, 2**32 - 1)
UINT64: Final = (0, 2**64 - 1)


def to_int(value: int, name: str, bounds: tuple[int, int] = INT64) -> int:
    """``value`` for a proto integer field (TypeError or ValueError naming
    ``name``: protobuf's own errors name no argument). What the number
    means (a lease that exists, a positive ttl) the node checks."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _utf8(text: str, name: str) -> bytes:
    """``text`` in UTF-8; a lone surrogate ("\\ud800", from a bad decode)
    has none: ValueError naming ``name`` (UnicodeEncodeError named nothing,
    and for a key came from inside protobuf)."""
    try:
        return text.encode()
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{name} is not valid Unicode text: {text[e.start : e.end]!r} at offset {e.start}"
        ) from None


def to_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    if not key.isascii():
        _utf8(key, "key")
    return key


def to_value(value: bytes | str, name: str = "value") -> bytes:
    if isinstance(value, str):
        return _utf8(value, name)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes or str, not {type(value).__name__}")


def put_request(key: str, value: bytes | str, lease: int) -> kv_pb2.PutRequest:
    """A Put's request, its arguments checked (put, put_result and TxnOp.put, in
    both clients)."""
    return kv_pb2.PutRequest(key=to_key(key), value=to_value(value), lease=to_int(lease, "lease"))


# -- security -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """TLS for the client's connections. ``ca``: PEM certificates that may
    sign the nodes' certificates (None: the system's trusted roots);
    ``cert``/``key``: a client certificate and its key, for nodes that
    require one; ``server_name``: the name to check the nodes' certificates
    against instead of each endpoint's host."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @classmethod
    def from_files(
        cls,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
    ) -> TLSOptions:
        def read(path: str | os.PathLike[str] | None) -> bytes | None:
            if path is None or path == "":
                return None
            with open(path, "rb") as f:
                return f.read()

        return cls(read(ca), read(cert), read(key), server_name or None)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def channel_options(self) -> tuple[tuple[str, str | int], ...]:
        if self.server_name:
            return (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self.server_name))
        return CHANNEL_OPTIONS


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The call metadata that carries ``token`` (None: send none)."""
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"token must be str, not {type(token).__name__}")
    token = token.strip()
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError("token must be one word of printable characters")
    return (("authorization", f"Bearer {token}"),)


# -- results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetResult:
    found: bool
    value: bytes | None  # None when not found
    index: int  # the applied index of the node that served the read
    # Key-value version 2 (all 0 before it, and when not found):
    revision: int = 0  # the revision the read observed
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class CasResult:
    swapped: bool
    found: bool  # whether the key existed before the request
    current: bytes | None  # the value before the request; None when absent
    index: int
    # Key-value version 2: the revision of the swap (the current one when it
    # did not happen), and the key's mod revision and version after it.
    revision: int = 0
    mod_revision: int = 0
    version: int = 0


@dataclass(frozen=True, slots=True)
class RangePage:
    items: list[tuple[str, bytes]]
    more: bool  # more keys match after the last item
    index: int
    revision: int = 0  # key-value version 2: the revision the read observed
    kvs: tuple[Any, ...] = ()  # the items with their revisions (client._revisions.KeyValue)


# -- sessions ------------------------------------------------------------------


class _Epoch:
    """One client id and the numbering of its writes."""

    __slots__ = ("client_id", "done", "in_flight", "last")

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.last = 0
        # Sequences in increasing order; finished ones are dropped from the
        # front lazily, so the front is the lowest still in flight.
        self.in_flight: collections.deque[int] = collections.deque()
        self.done: set[int] = set()


class Ticket(NamedTuple):
    """One write's session identity: its client id (epoch) and sequence."""

    epoch: _Epoch
    sequence: int


SESSION_EXPIRED: Final = "SESSION_EXPIRED"


def session_expired(error: RamraftError) -> bool:
    """The cluster forgot this client's session (FAILED_PRECONDITION whose
    message starts with the state machine's error code, server/rpc/services.py)."""
    return error.code == grpc.StatusCode.FAILED_PRECONDITION and error.details.startswith(
        SESSION_EXPIRED
    )


def _random_client_id() -> int:
    client_id = 0
    while client_id == 0:
        client_id = secrets.randbits(64)
    return client_id


class SessionTracker:
    """Numbers this client's writes. The id is random and non-zero; sequence
    numbers start at 1. ``first_unacked`` is the lowest sequence still in
    flight, so that the cluster knows which replies it may forget while
    several writes are outstanding. Thread-safe.

    If the cluster forgets the session (it expired: idle too long, or pushed
    out by many newer clients), every later write would be refused; ``renew``
    starts a new session (a new random id, sequences from 1). Writes begun
    under the old id keep it."""

    def __init__(self, client_id: int | None = None) -> None:
        if client_id is None:
            client_id = _random_client_id()
        if not 0 < client_id < 2**64:
            raise ValueError("client_id must be a non-zero unsigned 64-bit integer")
        self._epoch = _Epoch(client_id)
        self._open = 0
        self._lock = threading.Lock()

    @property
    def client_id(self) -> int:
        """The id new writes are sent with."""
        return self._epoch.client_id

    def begin(self) -> Ticket:
        with self._lock:
            epoch = self._epoch
            epoch.last += 1
            epoch.in_flight.append(epoch.last)
            self._open += 1
            return Ticket(epoch, epoch.last)

    def session(self, ticket: Ticket) -> kv_pb2.Session:
        """The Session for an attempt of the write (built for each attempt:
        first_unacked may have moved up in between)."""
        epoch, sequence = ticket
        with self._lock:
            first = epoch.in_flight[0] if epoch.in_flight else sequence
        return kv_pb2.Session(client_id=epoch.client_id, sequence=sequence, first_unacked=first)

    def end(self, ticket: Ticket) -> None:
        """The write got its final answer, or the client gave up on it."""
        epoch, sequence = ticket
        with self._lock:
            if sequence in epoch.done or not epoch.in_flight or sequence < epoch.in_flight[0]:
                return  # ended already (what is below the front has ended)
            epoch.done.add(sequence)
            self._open -= 1
            while epoch.in_flight and epoch.in_flight[0] in epoch.done:
                epoch.done.discard(epoch.in_flight.popleft())

    def renew(self, expired: Ticket) -> None:
        """The cluster said the session of ``expired`` is gone: new writes get
        a new id (once per expired id, however many writes report it)."""
        with self._lock:
            if expired.epoch is self._epoch:
                self._epoch = _Epoch(_random_client_id())

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._open


# -- endpoints and retries -------------------------------------------------------


class EndpointRing:
    """The endpoints, and which one to try next. Calls stick to an endpoint
    that works; a failure moves on; a leader hint jumps to the leader.

    Writes also know the leader a follower named when it forwarded one
    (``lead``): they go there directly, while reads stay where they are
    (any node serves them, and spreading them spreads the load). A write
    forwarded costs the follower and the leader a gRPC call each, unbatched:
    a client that stayed on a follower wrote at a fifth of the rate of one
    on the leader (16 in flight, 856 against 4,124/s). A failure at that
    leader sends writes back to the ring."""

    def __init__(self, endpoints: Sequence[str], rng: random.Random) -> None:
        self._configured = list(endpoints)
        self._endpoints = list(endpoints)
        # Different clients start at different nodes, to spread the load.
        self._current = rng.randrange(len(self._endpoints))
        self._bad_hints: dict[str, float] = {}
        self._leader: str | None = None  # where writes go, if not to current()
        self._lock = threading.Lock()

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def current(self, write: bool = False) -> str:
        """Where the next call goes (``write``: a write's, the leader when
        a follower named it)."""
        with self._lock:
            if write and self._leader is not None:
                return self._leader
            return self._endpoints[self._current % len(self._endpoints)]

    def failed(self, endpoint: str, *, connection: bool) -> None:
        """``endpoint`` failed: move past it (if no other call did already)."""
        with self._lock:
            if endpoint == self._leader:
                self._leader = None  # writes go to the ring again
                if connection and endpoint not in self._configured:
                    self._bad_hints[endpoint] = time.monotonic() + BAD_HINT_SECONDS
            if endpoint not in self._endpoints:
                return
            i = self._endpoints.index(endpoint)
            if connection and endpoint not in self._configured:
                # A hinted address we cannot reach: forget it for a while.
                self._bad_hints[endpoint] = time.monotonic() + BAD_HINT_SECONDS
                del self._endpoints[i]
                self._current = i % len(self._endpoints)
            elif self._current % len(self._endpoints) == i:
                self._current = (i + 1) % len(self._endpoints)

    def lead(self, address: str) -> None:
        """A follower forwarded a write to ``address``, the leader: send
        writes there from now on (reads stay where they are)."""
        try:
            (address,) = parse_endpoints([address])
        except (ValueError, TypeError):
            return
        with self._lock:
            if self._bad_hints.get(address, 0.0) > time.monotonic():
                return
            self._leader = address

    def hint(self, address: str) -> bool:
        """Prefer ``address`` (the leader) from now on. Returns whether the
        next endpoint changed."""
        try:
            (address,) = parse_endpoints([address])
        except (ValueError, TypeError):
            return False
        with self._lock:
            if self._bad_hints.get(address, 0.0) > time.monotonic():
                return False
            if address not in self._endpoints:
                self._endpoints.append(address)
            i = self._endpoints.index(address)
            if self._current % len(self._endpoints) == i:
                return False
            self._current = i
            return True


class UnaryOnly:
    """The endpoints that answered a KV.Stream with UNIMPLEMENTED (an older
    node, or a proxy that passes only unary calls), and until when they get
    unary calls only (client/_stream.py). Also used for the endpoints that
    get KV.Stream rather than KV.StreamBatch."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def __contains__(self, endpoint: str) -> bool:
        with self._lock:
            until = self._until.get(endpoint)
            if until is None:
                return False
            if until > time.monotonic():
                return True
            del self._until[endpoint]
            return False

    def add(self, endpoint: str) -> None:
        with self._lock:
            self._until[endpoint] = time.monotonic() + UNSUPPORTED_SECONDS


def leader_hint(*metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for md in metadata:
        for key, value in md or ():
            if key == LEADER_METADATA_KEY:
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                return text.strip() or None
    return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempt_timeout``: the longest one attempt may take (None: all the
    time left). Pauses between rounds grow from ``backoff_base`` by doubling
    up to ``backoff_max``, with jitter."""

    attempt_timeout: float | None = None
    backoff_base: float = 0.05
    backoff_max: float = 1.0

    def pause(self, round_: int, rng: random.Random) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * float(2 ** min(round_, 30)))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


# Server-side UNAVAILABLE messages that mean the request never reached a
# server (as opposed to a server that answered "no leader").
_CONNECTION_FAILURE = ("failed to connect", "connection refused", "dns resolution failed")


class CallAttempts:
    """One logical call: its deadline and the state of its attempts.

    Usage (the clients wrap it around blocking or awaiting calls)::

        attempts = CallAttempts(...)
        while True:
            endpoint, timeout = attempts.next()   # raises when out of time
            try: result = call(endpoint, timeout); attempts.succeeded(...); return result
            except grpc.RpcError as e: pause = attempts.failed(endpoint, e)  # raises if final
            sleep(pause)
    """

    def __init__(
        self,
        ring: EndpointRing,
        timeout: float,
        policy: RetryPolicy,
        rng: random.Random,
        *,
        pinned: str | None = None,
        method: str = "",
        sequence: int | None = None,
        write: bool = False,
    ) -> None:
        self._ring = ring
        self._write = write  # goes to the leader a follower named (EndpointRing.lead)
        self._policy = policy
        self._rng = rng
        self._pinned = pinned
        self._method = method
        self._sequence = sequence  # the write's session sequence, for the log
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self.attempts = 0
        self._failures_in_round = 0
        self._round = 0
        self._last_error: grpc.RpcError | None = None
        self._last_endpoint: str | None = None

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def next(self) -> tuple[str, float]:
        remaining = self.remaining()
        if remaining <= 0.001:
            raise self._give_up()
        endpoint = self._pinned or self._ring.current(self._write)
        timeout = remaining
        if self._policy.attempt_timeout is not None and not self._pinned:
            timeout = min(timeout, self._policy.attempt_timeout)
        self.attempts += 1
        return endpoint, timeout

    def succeeded(self, trailing: Iterable[tuple[str, str | bytes]] | None) -> None:
        hint = leader_hint(trailing)
        if hint is None or self._pinned is not None:
            return
        if self._write:
            self._ring.lead(hint)  # a follower forwarded it: write there next
        else:
            self._ring.hint(hint)

    def failed(self, endpoint: str, error: grpc.RpcError) -> float:
        """The pause before the next attempt; raises the final exception
        when the error is not worth retrying or no time is left."""
        pause = self._pause_after(endpoint, error)
        code = error_code(error)
        log.debug(
            "retrying %s: %s from %s (attempt %d, pause %.3f s, sequence %s)",
            self._method,
            code.name if code is not None else "UNKNOWN",
            endpoint,
            self.attempts,
            pause,
            self._sequence,
        )
        return pause

    def _pause_after(self, endpoint: str, error: grpc.RpcError) -> float:
        self._last_error, self._last_endpoint = error, endpoint
        code = error_code(error)
        details = (error_details(error) or "").lower()
        overloaded = code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" not in details
        retry = (
            code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            or (code == grpc.StatusCode.DEADLINE_EXCEEDED and self.remaining() > 0.001)
            or overloaded
        )
        if not retry or self._pinned is not None:
            raise self._error(error, endpoint)
        if overloaded:
            # Refused before anything was proposed: safe to send again, after a pause.
            self._ring.failed(endpoint, connection=False)
            pause = self._policy.pause(self._round, self._rng)
            self._round += 1
            return max(0.0, min(pause, self.remaining() - 0.001))
        connection = any(s in details for s in _CONNECTION_FAILURE)
        hint = leader_hint(error_metadata(error, "trailing"), error_metadata(error, "initial"))
        self._ring.failed(endpoint, connection=connection)
        if hint is not None and hint != endpoint and self._ring.hint(hint):
            return 0.0
        self._failures_in_round += 1
        if self._failures_in_round < len(self._ring.endpoints):
            return 0.0
        self._failures_in_round = 0
        pause = self._policy.pause(self._round, self._rng)
        self._round += 1
        return max(0.0, min(pause, self.remaining() - 0.001))

    def _error(self, error: grpc.RpcError, endpoint: str) -> RamraftError:
        found = error_from(self._method, error, endpoint)
        found.attempts = self.attempts
        return found

    def _give_up(self) -> RamraftError:
        error, endpoint = self._last_error, self._last_endpoint
        code = error_code(error) if error is not None else None
        tried = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        name = code.name if code else "UNKNOWN"
        last = (
            f"; last error from {endpoint}: {name}: {error_details(error)}"
            if error is not None
            else ""
        )
        cls: type[RamraftError] = DeadlineExceeded
        if code == grpc.StatusCode.UNAVAILABLE:
            cls = Unavailable
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            cls = ResourceExhausted
        what = "no node could serve it" if cls is Unavailable else "deadline exceeded"
        return cls(
            f"{self._method}: {what} within {self._timeout:g}s ({tried}){last}",
            code=code,
            details=(error_details(error) or "") if error is not None else "",
            endpoint=endpoint,
            attempts=self.attempts,
        )


def error_from(method: str, error: grpc.RpcError, endpoint: str) -> RamraftError:
    """The library's error for a call that is not retried (e.g. a stream
    that broke after it began)."""
    code = error_code(error)
    details = error_details(error) or ""
    name = code.name if code is not None else "UNKNOWN"
    return error_for_status(code)(
        f"{method}: {name} from {endpoint}: {details}".strip(": "),
        code=code,
        details=details,
        endpoint=endpoint,
        attempts=1,
    )


def error_code(error: grpc.RpcError | None) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    if callable(code):
        result = code()
        return result if isinstance(result, grpc.StatusCode) else None
    return None


def error_details(error: grpc.RpcError | None) -> str | None:
    details = getattr(error, "details", None)
    if callable(details):
        result = details()
        return result if isinstance(result, str) else None
    return None


def error_metadata(error: grpc.RpcError, which: str) -> Iterable[tuple[str, str | bytes]] | None:
    getter = getattr(error, f"{which}_metadata", None)
    if not callable(getter):
        return None
    try:
        result = getter()
    except Exception:  # metadata is best effort
        return None
    return result if isinstance(result, Iterable) else None


# -- requests --------------------------------------------------------------------


def renew_after_expiry(
    sessions: SessionTracker,
    ticket: Ticket,
    error: FailedPrecondition,
    method: str,
    deadline: float,
) -> tuple[Ticket, float]:
    """A write refused because the cluster forgot this client's session: the
    session is renewed for later writes. If the refusal came on the write's
    only attempt, it was not applied and may be sent once more: returns the
    new ticket and the time left. Otherwise raises (an earlier attempt may
    have been applied before the session expired)."""
    if not session_expired(error):
        raise error
    sessions.renew(ticket)
    left = deadline - time.monotonic()
    if error.attempts != 1 or left <= 0.001:
        raise FailedPrecondition(
            f"{method}: the cluster forgot this client's session while the write "
            "was being retried; it may or may not have been applied (new writes "
            "use a new session)",
            code=error.code,
            details=error.details,
            endpoint=error.endpoint,
            attempts=error.attempts,
        ) from error
    sessions.end(ticket)
    return sessions.begin(), left


class ClientBase:
    """What the blocking and the asyncio client share: the endpoints, the
    default deadline, the retry policy, the session, the credentials and the
    transport of key-value calls (``transport``: "stream", the default, sends
    them over one KV.Stream per node; "unary" makes one call each)."""

    _stubs: dict[str, Any]
    _streams: dict[str, Any]  # one KV.Stream per endpoint, opened on first use

    def __init__(
        self,
        endpoints: str | Iterable[str],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        attempt_timeout: float | None = None,
        client_id: int | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        token: str | None = None,
        tls: TLSOptions | None = None,
        transport: str | None = None,
    ) -> None:
        self.transport = check_transport(transport)
        self._metadata = token_metadata(token)
        self._tls = tls
        self._credentials = tls.credentials() if tls is not None else None
        self._rng = rng or random.Random()
        self._ring = EndpointRing(parse_endpoints(endpoints), self._rng)
        self.timeout = check_timeout(timeout)
        if attempt_timeout is not None:
            check_timeout(attempt_timeout, "attempt_timeout")
        self._policy = retry or RetryPolicy(attempt_timeout=attempt_timeout)
        self._sessions = SessionTracker(client_id)
        self._unary_only = UnaryOnly()
        self._no_batch = UnaryOnly()  # endpoints that get KV.Stream, not StreamBatch
        self._stubs = {}
        self._streams = {}
        self._lock = threading.Lock()  # the blocking client is shared between threads
        self._closed = False
        # The blocking client's watches, closed with it (a watch has a channel of its own).
        self._watchers: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def client_id(self) -> int:
        return self._sessions.client_id

    @property
    def endpoints(self) -> list[str]:
        return self._ring.endpoints


def range_page(response: kv_pb2.RangeResponse) -> RangePage:
    from ramraft.client._revisions import key_value

    return RangePage(
        items=[(kv.key, kv.value) for kv in response.items],
        more=response.more,
        index=response.index,
        revision=response.header.revision,
        kvs=tuple(key_value(kv) for kv in response.items),
    )


def get_result(r: kv_pb2.GetResponse) -> GetResult:
    return GetResult(
        found=r.found,
        value=r.value if r.found else None,
        index=r.index,
        revision=r.header.revision,
        create_revision=r.create_revision,
        mod_revision=r.mod_revision,
        version=r.version,
        lease=r.lease,
    )


def cas_request(
    key: str, expected: bytes | str | None, value: bytes | str
) -> kv_pb2.CompareAndSwapRequest:
    request = kv_pb2.CompareAndSwapRequest(key=to_key(key), value=to_value(value))
    if expected is not None:
        request.expected = to_value(expected, "expected")
    return request


def cas_result(response: kv_pb2.CompareAndSwapResponse) -> CasResult:
    return CasResult(
        swapped=response.swapped,
        found=response.found,
        current=response.current if response.found else None,
        index=response.index,
        revision=response.header.revision,
        mod_revision=response.mod_revision,
        version=response.version,
    )
