"""The ramraft client library.

    from ramraft.client import Client
    with Client("127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003", timeout=5) as c:
        c.put("greeting", b"hello")
        c.get("greeting")                             # b"hello"
        c.get("greeting", consistency=SERIALIZABLE)   # from the node's memory
        c.cas("greeting", b"hello", b"bye")           # CasResult(swapped=True, ...)

Against a cluster with TLS and tokens::

    Client(endpoints, token="...", tls=TLSOptions.from_files(ca="certs/ca.pem"))

Blobs (files kept beside the data, outside the log)::

    info = c.put_blob("photo.jpg")                    # BlobInfo; str(info) is the SHA-256
    c.read_blob(info, "copy.jpg")                     # streamed into a file
    c.get_blob(info)                                  # or the bytes, for small ones

``AsyncClient`` has the same methods as coroutines. Both retry on another
node while the cluster is unavailable, up to the call's deadline, and send
every write with a session so a retried write is applied once. Errors are
subclasses of ``RamraftError`` (see client.errors); a write that raised
``Unavailable`` or ``DeadlineExceeded`` may or may not have been applied.

The library logs each retry at DEBUG level to the standard ``logging`` logger
``ramraft.client`` and configures nothing itself: with no logging set up by
the application it writes nothing, to stdout or stderr.
"""

from ramraft.client._async import AsyncClient
from ramraft.client._blobs import BlobInfo
from ramraft.client._core import (
    DEFAULT_TIMEOUT,
    LEADER_METADATA_KEY,
    LINEARIZABLE,
    SERIALIZABLE,
    CasResult,
    GetResult,
    RangePage,
    RetryPolicy,
    TLSOptions,
    parse_endpoints,
)
from ramraft.client._sync import Client
from ramraft.client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RamraftError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "LEADER_METADATA_KEY",
    "LINEARIZABLE",
    "SERIALIZABLE",
    "AsyncClient",
    "BlobInfo",
    "CasResult",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GetResult",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RamraftError",
    "RangePage",
    "ResourceExhausted",
    "RetryPolicy",
    "TLSOptions",
    "Unauthenticated",
    "Unavailable",
    "parse_endpoints",
]
