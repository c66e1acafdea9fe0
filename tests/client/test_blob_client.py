"""The clients' blob calls against fake nodes: an upload is sent again only
when its bytes can be read again; a download that breaks goes on from where
it stopped on the next node; a path is written whole or not at all; the
asyncio client does the same."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from ramraft.client import AsyncClient, Client, InvalidArgument, NotFound, Unavailable
from ramraft.proto import blobs_pb2, blobs_pb2_grpc
from tests.client.fake_server import FakeServer

DATA = bytes(range(256)) * 12_000  # about 3 MiB: three upload messages
DIGEST = hashlib.sha256(DATA).hexdigest()


def test_put_and_read_back(server: FakeServer, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(DATA)
    with Client(server.address, timeout=5) as client:
        info = client.put_blob(source)
        assert (str(info), info.size, info.content_type) == (
            DIGEST,
            len(DATA),
            "application/octet-stream",
        )
        assert client.get_blob(f"sha256:{DIGEST.upper()}") == DATA
        out = io.BytesIO()
        client.read_blob(info, out, offset=10, length=20)
        assert out.getvalue() == DATA[10:30]
        assert client.blob_info(DIGEST).size == len(DATA)
        assert client.delete_blob(info) is True
        assert client.delete_blob(info) is False
        with pytest.raises(NotFound):
            client.get_blob(DIGEST)
        with pytest.raises(InvalidArgument, match="64 hex digits"):
            client.get_blob("not-a-reference")


def test_an_upload_is_sent_again_only_if_it_can_be_read_again(server: FakeServer) -> None:
    with Client(server.address, timeout=5) as client:
        server.node.fail_next(1)  # UNAVAILABLE
        assert client.put_blob(DATA).sha256 == DIGEST
        assert server.node.methods() == ["PutBlob", "PutBlob"]
        server.node.fail_next(1)
        with pytest.raises(Unavailable):
            client.put_blob(iter([DATA]))  # a one-shot stream: not sent twice
        assert server.node.methods().count("PutBlob") == 3


class _Breaking(blobs_pb2_grpc.BlobsServiceServicer):
    """A node whose first download breaks after the first MiB."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.lock = threading.Lock()

    def GetBlob(self, request: Any, context: Any) -> Iterator[blobs_pb2.GetBlobResponse]:
        with self.lock:
            self.offsets.append(request.offset)
            first = len(self.offsets) == 1
        info = blobs_pb2.BlobInfo(sha256=DIGEST, size=len(DATA), content_type="x/y")
        start = request.offset
        yield blobs_pb2.GetBlobResponse(blob=info, data=DATA[start : start + (1 << 20)])
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the node went away")
        for at in range(start + (1 << 20), len(DATA), 1 << 20):
            yield blobs_pb2.GetBlobResponse(data=DATA[at : at + (1 << 20)])


def test_a_broken_download_goes_on_where_it_stopped(tmp_path: Path) -> None:
    servicer = _Breaking()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    blobs_pb2_grpc.add_BlobsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=5) as client:
            target = tmp_path / "copy.bin"
            info = client.read_blob(DIGEST, target)
        assert target.read_bytes() == DATA and info.content_type == "x/y"
        assert servicer.offsets == [0, 1 << 20]
        assert [p.name for p in tmp_path.iterdir()] == ["copy.bin"]  # no partial file left
    finally:
        server.stop(None)


def test_a_failed_download_leaves_no_file(server: FakeServer, tmp_path: Path) -> None:
    target = tmp_path / "never.bin"
    with Client(server.address, timeout=2) as client, pytest.raises(NotFound):
        client.read_blob("0" * 64, target)
    assert list(tmp_path.iterdir()) == []


def test_the_asyncio_client(server: FakeServer, tmp_path: Path) -> None:
    async def pieces() -> Any:
        for start in range(0, len(DATA), 1 << 20):
            yield DATA[start : start + (1 << 20)]
            await asyncio.sleep(0)

    async def run() -> None:
        async with AsyncClient(server.address, timeout=5) as client:
            info = await client.put_blob(pieces(), content_type="image/png")
            assert info.sha256 == DIGEST and info.content_type == "image/png"
            assert await client.get_blob(info) == DATA
            await client.read_blob(info, tmp_path / "copy.png")
            assert (await client.blob_info(info)).size == len(DATA)
            assert await client.delete_blob(info) is True

    asyncio.run(run())
    assert (tmp_path / "copy.png").read_bytes() == DATA


def test_a_download_into_what_takes_no_bytes_is_refused_before_it_starts(
    server: FakeServer,
) -> None:
    """``read_blob(info, None)`` raised AttributeError at the first piece,
    after the download had begun."""
    with Client(server.address, timeout=5) as client:
        for out, name in [(None, "NoneType"), (5, "int"), (["x"], "list")]:
            with pytest.raises(TypeError, match=f"binary file .* or a path, not {name}"):
                client.read_blob(DIGEST, out)  # type: ignore[arg-type]
    assert server.node.calls == []

    async def run() -> None:
        async with AsyncClient(server.address, timeout=5) as client:
            with pytest.raises(TypeError, match="or a path, not NoneType"):
                await client.read_blob(DIGEST, None)  # type: ignore[arg-type]

    asyncio.run(run())
    assert server.node.calls == []


def test_an_upload_of_what_is_no_bytes_names_the_mistake(
    server: FakeServer, tmp_path: Path
) -> None:
    """A text-mode file, pieces that are str or int, or no data at all: a
    TypeError that says so, not "Exception iterating requests!" from gRPC's
    thread (nor, from the asyncio client, a CancelledError), and no piece
    sent as zero bytes (``bytes(5)``)."""
    text = tmp_path / "notes.txt"
    text.write_text("hello")

    async def strings() -> Any:
        yield "hello"

    with Client(server.address, timeout=5) as client, text.open() as opened:
        for data, match in [
            (opened, "binary mode"),
            (["hello"], "must be bytes, not str"),
            ([5], "must be bytes, not int"),
            (5, "not int"),
            (None, "not NoneType"),
        ]:
            with pytest.raises(TypeError, match=match):
                client.put_blob(data)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="directory"):
            client.put_blob(tmp_path)
        with pytest.raises(ValueError, match="timeout"):
            client.put_blob(b"x", timeout=0)

    async def run() -> None:
        async with AsyncClient(server.address, timeout=5) as client:
            for data in (strings(), ["hello"], [5]):
                with pytest.raises(TypeError, match="must be bytes"):
                    await client.put_blob(data)  # type: ignore[arg-type]

    asyncio.run(run())
