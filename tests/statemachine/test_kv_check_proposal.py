"""KVMachine.check_proposal reads most commands without decoding them
(their first field is a known, active operation); what it answers must be
what the full decode answers, for every command: one it let through that
the active version does not allow would be written to the log and refused
by every node that applies it; one it refused wrongly would fail a write."""

from __future__ import annotations

import random

import msgpack
import pytest

from ramraft.server.machines.kv import (
    KVMachine,
    encode_cas,
    encode_delete,
    encode_lease_grant,
    encode_lease_renew,
    encode_lease_revoke,
    encode_noop,
    encode_put,
    encode_txn,
)
from ramraft.server.machines.kvops import Txn, TxnOp, TxnOpKind
from ramraft.server.machines.statemachine import TAG_KV


def commands() -> list[bytes]:
    session = (77, 5, 3)
    txn = Txn((), (TxnOp(TxnOpKind.PUT, "t", b"v"),), ())
    made = [
        encode_noop(),
        encode_put("k", b"v"),
        encode_put("k", b"v" * 5000, session),
        encode_delete("k"),
        encode_delete("k", session),
        encode_cas("k", None, b"v"),
        encode_cas("k", b"a", b"b", session),
        encode_txn(txn),
        encode_txn(txn, session),
        encode_lease_grant(9, 10),
        encode_lease_revoke(9),
        encode_lease_renew([9, 10]),
    ]
    tag = bytes([TAG_KV])
    odd = [
        b"",
        tag,
        tag + b"\x90",  # an empty array
        tag + msgpack.packb([99, "k", b"v"]),  # an operation of a newer release
        tag + msgpack.packb([1, "k"]),  # a put without its value
        tag + msgpack.packb([1, "k", b"v", 1, 2]),  # a bad session
        tag + b"\x93\x01\xc1\xc1",  # a fixarray whose rest is not msgpack
        tag + b"\xdc\x00\x03\x01\xa1k\xc4\x01v",  # a put in an array16
        tag + b"\x93\xcc\x01\xa1k\xc4\x01v",  # the operation as a uint8
        tag + b"\x93\xcc\x63\xa1k\xc4\x01v",  # an unknown one as a uint8
        b"\x02" + encode_put("k", b"v")[1:],  # another machine's tag
    ]
    rng = random.Random(20261206)
    fuzz = []
    for _ in range(3000):
        base = rng.choice(made)
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        fuzz.append(bytes(data[: rng.randint(1, len(data))]))
    return made + odd + fuzz


@pytest.mark.parametrize("version", [1, 2])
def test_the_answer_is_the_full_decodes(version: int) -> None:
    machine = KVMachine()
    machine.active_version = version
    refused = 0
    for command in commands():
        expected = machine.check_decoded(command)  # the rule the shortcut keeps
        assert machine.check_proposal(command) == expected, command
        refused += expected is not None
    assert refused > 0, "the corpus holds commands to refuse"
