"""The fake shed-server speaks shed-server's contract, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from scripts.fake_shed_server import FakeShed, FakeShedServer
from splice.errors import BackendError, RouteError, SpliceError
from splice.wire.connect_api import parse_connect_response, render_connect_request

T = TypeVar("T")


def run(test: Callable[[FakeShedServer], Awaitable[T]], *sheds: FakeShed) -> T:
    async def main() -> T:
        async with FakeShedServer(sheds) as fake:
            return await test(fake)

    return asyncio.run(main())


async def http(fake: FakeShedServer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, half-closed after it, read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    writer.write(raw)
    writer.write_eof()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def dial(
    fake: FakeShedServer, shed: str, port: int, extra: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Connect API handshake with splice's own codec; returns streams and leftover."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    writer.write(render_connect_request(shed, port, f"127.0.0.1:{fake.port}") + extra)
    buf = b""
    while True:
        chunk = await reader.read(65536)
        buf += chunk
        try:
            answer = parse_connect_response(buf, eof=not chunk)
        except SpliceError:
            writer.close()
            raise
        if answer is not None:
            return reader, writer, answer[1]


class TestApi:
    def test_info_has_shed_servers_shape(self) -> None:
        status, headers, body = run(lambda f: http(f, get("/api/info")))
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body) == {
            "name": "mini-desktop", "version": "1.0.0", "ssh_port": 2222,
            "http_port": 8080, "backend": "firecracker",
        }  # fmt: skip

    def test_lists_sheds_omitting_empty_fields(self) -> None:
        full = FakeShed("codelens", ip_address="172.30.0.3", repo="charliek/codelens", cpus=2,
                        memory_mb=4096)  # fmt: skip
        bare = FakeShed("bare", status="stopped")
        status, _, body = run(lambda f: http(f, get("/api/sheds")), full, bare)
        assert status == 200
        assert json.loads(body) == {
            "sheds": [
                {"name": "bare", "status": "stopped", "created_at": "2026-01-20T10:30:00Z",
                 "backend": "firecracker"},
                {"name": "codelens", "status": "running", "created_at": "2026-01-20T10:30:00Z",
                 "repo": "charliek/codelens", "backend": "firecracker",
                 "ip_address": "172.30.0.3", "cpus": 2, "memory_mb": 4096},
            ]
        }  # fmt: skip

    def test_gets_one_shed_or_a_json_404(self) -> None:
        async def test(fake: FakeShedServer) -> None:
            status, _, body = await http(fake, get("/api/sheds/web"))
            assert status == 200 and json.loads(body)["ip_address"] == "10.0.0.9"
            status, _, body = await http(fake, get("/api/sheds/nope"))
            assert status == 404
            assert json.loads(body) == {
                "error": {"code": "SHED_NOT_FOUND", "message": "Shed 'nope' not found"}
            }

        run(test, FakeShed("web", ip_address="10.0.0.9"))

    def test_unknown_paths_and_methods_answer_like_gos_mux(self) -> None:
        async def test(fake: FakeShedServer) -> None:
            status, headers, body = await http(fake, get("/api/nothing"))
            assert (status, body) == (404, b"404 page not found\n")
            assert headers["content-type"].startswith("text/plain")
            status, _, _ = await http(fake, get("/api/sheds", "DELETE"))
            assert status == 405

        run(test)

    def test_keeps_connections_alive_and_counts(self) -> None:
        async def test(fake: FakeShedServer) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
            for _ in range(3):
                writer.write(b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            writer.close()
            assert (fake.connections, fake.requests, fake.paths["/api/info"]) == (1, 3, 3)

        run(test)

    @pytest.mark.parametrize(("fail", "status"), [("500", 500), ("garbage", 200), ("drop", None)])
    def test_fails_on_demand(self, fail: str, status: int | None) -> None:
        async def test(fake: FakeShedServer) -> None:
            fake.fail = fail
            if status is None:
                with pytest.raises((ValueError, IndexError)):
                    await http(fake, get("/api/info"))  # closed without an answer
                return
            got, _, body = await http(fake, get("/api/info"))
            assert got == status
            if fail == "500":
                assert json.loads(body)["error"]["code"] == "INTERNAL_ERROR"
            else:
                with pytest.raises(ValueError):
                    json.loads(body)

        run(test)


class TestConnect:
    def test_upgrades_and_relays_both_ways_including_early_bytes(self) -> None:
        async def test(fake: FakeShedServer) -> None:
            echo = await echo_server()
            port = echo.sockets[0].getsockname()[1]
            fake.add_shed("web", ip_address="127.0.0.1")
            reader, writer, leftover = await dial(fake, "web", port, extra=b"early ")
            writer.write(b"bytes")
            got = leftover
            while len(got) < 11:
                got += await reader.read(100)
            assert got == b"early bytes"
            writer.close()
            echo.close()

        run(test)

    def test_dials_a_shed_without_ip_through_its_dial_host(self) -> None:
        async def test(fake: FakeShedServer) -> None:
            echo = await echo_server()
            fake.add_shed("vz", dial_host="127.0.0.1")
            reader, writer, _ = await dial(fake, "vz", echo.sockets[0].getsockname()[1])
            writer.write(b"x")
            assert await reader.read(1) == b"x"
            writer.close()
            echo.close()

        run(test)

    @pytest.mark.parametrize(
        ("shed", "status", "port", "cls", "code"),
        [
            ("ghost", "running", 0, RouteError, "SHED_NOT_FOUND"),
            ("web", "stopped", 0, BackendError, "SHED_NOT_RUNNING"),
            ("web", "running", 0, BackendError, "CONNECT_FAILED"),
        ],
    )
    def test_refuses_with_shed_servers_statuses(
        self, shed: str, status: str, port: int, cls: type[SpliceError], code: str
    ) -> None:
        async def test(fake: FakeShedServer) -> None:
            fake.add_shed("web", ip_address="127.0.0.1", status=status)
            with pytest.raises(cls) as e:
                await dial(fake, shed, port or free_port())
            assert e.value.code == code
            assert e.value.message  # the JSON message came through

        run(test)

    @pytest.mark.parametrize("port", ["0", "65536", "abc"])
    def test_rejects_invalid_ports(self, port: str) -> None:
        async def test(fake: FakeShedServer) -> None:
            fake.add_shed("web", ip_address="127.0.0.1")
            raw = (
                f"GET /api/sheds/web/connect/{port} HTTP/1.1\r\nHost: x\r\n"
                "Connection: Upgrade\r\nUpgrade: shed-tcp\r\n\r\n"
            ).encode()
            status, _, body = await http(fake, raw)
            assert status == 400 and json.loads(body)["error"]["code"] == "INVALID_PORT"

        run(test)

    def test_rejects_invalid_names_and_missing_upgrade(self) -> None:
        async def test(fake: FakeShedServer) -> None:
            raw = b"GET /api/sheds/Bad_Name/connect/80 HTTP/1.1\r\nHost: x\r\n"
            raw += b"Connection: Upgrade\r\nUpgrade: shed-tcp\r\n\r\n"
            status, _, body = await http(fake, raw)
            assert status == 400 and json.loads(body)["error"]["code"] == "INVALID_SHED_NAME"
            status, _, _ = await http(fake, get("/api/sheds/web/connect/80"))
            assert status == 400

        run(test)

    def test_stop_closes_relayed_connections(self) -> None:
        async def main() -> None:
            echo = await echo_server()
            fake = FakeShedServer([FakeShed("web", ip_address="127.0.0.1")])
            await fake.start()
            reader, writer, _ = await dial(fake, "web", echo.sockets[0].getsockname()[1])
            await fake.stop()
            assert await asyncio.wait_for(reader.read(), 2) == b""
            writer.close()
            echo.close()

        asyncio.run(main())
