"""The public contract of issue 4, checked against the generated descriptors:
acceptance tests outside this repository call these names, so a rename or a
renumbering must fail here first."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ramraft.consensus.types import EntryKind, MsgType
from ramraft.proto import admin_pb2, kv_pb2, raft_pb2

T = FieldDescriptor


def _fields(message: Descriptor) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in message.fields}


def _contains(message: Descriptor, expected: dict[str, tuple[int, int]]) -> None:
    actual = _fields(message)
    for name, spec in expected.items():
        assert actual.get(name) == spec, f"{message.full_name}.{name}: {actual.get(name)} != {spec}"


def test_package_and_services() -> None:
    assert kv_pb2.DESCRIPTOR.package == "ramraft.v1"
    assert admin_pb2.DESCRIPTOR.package == "ramraft.v1"
    kv = kv_pb2.DESCRIPTOR.services_by_name["KV"]
    methods = {
        m.name: (m.input_type.name, m.output_type.name, m.client_streaming, m.server_streaming)
        for m in kv.methods
    }
    # The contract's five unary calls, exactly; RPCs may be added (Stream).
    assert methods == {
        "Put": ("PutRequest", "PutResponse", False, False),
        "Get": ("GetRequest", "GetResponse", False, False),
        "Delete": ("DeleteRequest", "DeleteResponse", False, False),
        "CompareAndSwap": ("CompareAndSwapRequest", "CompareAndSwapResponse", False, False),
        "Range": ("RangeRequest", "RangeResponse", False, False),
        "Stream": ("StreamRequest", "StreamResponse", True, True),
        "StreamBatch": ("StreamBatchRequest", "StreamBatchResponse", True, True),
        # Issue 16: the key-value API etcd users expect.
        "DeleteRange": ("DeleteRangeRequest", "DeleteRangeResponse", False, False),
        "Txn": ("TxnRequest", "TxnResponse", False, False),
        "Watch": ("WatchRequest", "WatchResponse", True, True),
    }
    lease = kv_pb2.DESCRIPTOR.services_by_name["Lease"]
    assert {m.name: (m.client_streaming, m.server_streaming) for m in lease.methods} == {
        "Grant": (False, False),
        "Revoke": (False, False),
        "KeepAlive": (True, True),
        "TimeToLive": (False, False),
    }
    admin = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
    assert {"Status", "TransferLeadership", "AddMember", "RemoveMember", "Snapshot"} <= {
        m.name for m in admin.methods
    }


def test_consistency_and_session() -> None:
    assert dict(kv_pb2.Consistency.items()) == {"LINEARIZABLE": 0, "SERIALIZABLE": 1}
    _contains(
        kv_pb2.Session.DESCRIPTOR, {"client_id": (1, T.TYPE_UINT64), "sequence": (2, T.TYPE_UINT64)}
    )


def test_kv_messages() -> None:
    m = kv_pb2
    _contains(
        m.PutRequest.DESCRIPTOR,
        {"key": (1, T.TYPE_STRING), "value": (2, T.TYPE_BYTES), "session": (3, T.TYPE_MESSAGE)},
    )
    _contains(m.PutResponse.DESCRIPTOR, {"index": (1, T.TYPE_UINT64)})
    _contains(m.GetRequest.DESCRIPTOR, {"key": (1, T.TYPE_STRING), "consistency": (2, T.TYPE_ENUM)})
    _contains(
        m.GetResponse.DESCRIPTOR,
        {"found": (1, T.TYPE_BOOL), "value": (2, T.TYPE_BYTES), "index": (3, T.TYPE_UINT64)},
    )
    _contains(
        m.DeleteRequest.DESCRIPTOR, {"key": (1, T.TYPE_STRING), "session": (2, T.TYPE_MESSAGE)}
    )
    _contains(m.DeleteResponse.DESCRIPTOR, {"deleted": (1, T.TYPE_BOOL)})
    cas = m.CompareAndSwapRequest.DESCRIPTOR
    _contains(
        cas,
        {
            "key": (1, T.TYPE_STRING),
            "expected": (2, T.TYPE_BYTES),
            "value": (3, T.TYPE_BYTES),
            "session": (4, T.TYPE_MESSAGE),
        },
    )
    assert cas.fields_by_name["expected"].has_presence  # `optional`: unset = "key absent"
    _contains(
        m.CompareAndSwapResponse.DESCRIPTOR,
        {"swapped": (1, T.TYPE_BOOL), "found": (2, T.TYPE_BOOL), "current": (3, T.TYPE_BYTES)},
    )
    _contains(
        m.RangeRequest.DESCRIPTOR,
        {
            "prefix": (1, T.TYPE_STRING),
            "start_after": (2, T.TYPE_STRING),
            "limit": (3, T.TYPE_UINT32),
            "consistency": (4, T.TYPE_ENUM),
        },
    )
    _contains(m.RangeResponse.DESCRIPTOR, {"items": (1, T.TYPE_MESSAGE), "more": (2, T.TYPE_BOOL)})
    assert m.RangeResponse.DESCRIPTOR.fields_by_name["items"].is_repeated
    _contains(m.KeyValue.DESCRIPTOR, {"key": (1, T.TYPE_STRING), "value": (2, T.TYPE_BYTES)})


def test_admin_status_has_what_the_issue_lists() -> None:
    node = set(_fields(admin_pb2.NodeStatus.DESCRIPTOR))
    assert {"id", "role", "term", "leader", "commit_index", "applied_index", "last_index"} <= node
    member = set(_fields(admin_pb2.MemberStatus.DESCRIPTOR))
    assert {"id", "address", "suffrage", "match_index", "lag"} <= member
    assert set(_fields(admin_pb2.AddMemberRequest.DESCRIPTOR)) == {"id", "address"}
    _contains(admin_pb2.SnapshotResponse.DESCRIPTOR, {"index": (1, T.TYPE_UINT64)})


def test_peer_enums_mirror_the_core() -> None:
    # The codec converts by value, so names and numbers must line up.
    assert {name.removeprefix("MSG_"): v for name, v in raft_pb2.MessageType.items()} == {
        t.name: t.value for t in MsgType
    }
    assert {name.removeprefix("ENTRY_"): v for name, v in raft_pb2.EntryKind.items()} == {
        k.name: k.value for k in EntryKind
    }


def test_fields_added_after_the_first_release_take_new_numbers() -> None:
    """A node of release 0.1.0 leaves them unset: pid 0, version "", and no
    ForwardRefusal (which its followers then read as "may have been applied")."""
    _contains(
        admin_pb2.NodeStatus.DESCRIPTOR,
        {"first_index": (11, T.TYPE_UINT64), "pid": (12, T.TYPE_UINT32)},
    )
    _contains(admin_pb2.NodeStatus.DESCRIPTOR, {"version": (13, T.TYPE_STRING)})
    assert _fields(raft_pb2.ForwardRequest.DESCRIPTOR) == {"command": (1, T.TYPE_BYTES)}
    assert _fields(raft_pb2.ForwardResponse.DESCRIPTOR) == {
        "result": (1, T.TYPE_BYTES),
        "index": (2, T.TYPE_UINT64),
    }
    assert _fields(raft_pb2.ForwardRefusal.DESCRIPTOR) == {"before_proposal": (1, T.TYPE_BOOL)}
