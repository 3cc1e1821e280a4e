"""ShedApiResolver against the fake shed-server, over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from scripts.fake_shed_server import FakeShed, FakeShedServer
from splice.errors import BackendError
from splice.resolve.base import Endpoint
from splice.resolve.shed_api import MAX_CONNECTIONS, ShedApiResolver

Test = Callable[[FakeShedServer, ShedApiResolver], Awaitable[None]]


def run(test: Test, *sheds: FakeShed, timeout: float = 2.0) -> None:
    async def main() -> None:
        async with FakeShedServer(sheds) as fake:
            api = ShedApiResolver(fake.base_url, timeout=timeout)
            try:
                await test(fake, api)
            finally:
                await api.close()

    asyncio.run(main())


async def unavailable(api: ShedApiResolver, shed: str = "web") -> BackendError:
    with pytest.raises(BackendError) as e:
        await api.resolve(shed)
    assert e.value.code == "RESOLVER_UNAVAILABLE"
    return e.value


WEB = FakeShed("web", ip_address="172.30.0.3")


class TestAnswers:
    def test_a_running_shed_is_its_ip(self) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            assert await api.resolve("web") == Endpoint("web", "172.30.0.3", "running", "shed-api")
            assert fake.paths["/api/sheds/web"] == 1

        run(test, WEB)

    def test_a_running_shed_without_ip_is_reachable_only_by_connect(self) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            ep = await api.resolve("vz")
            assert ep is not None and ep.address is None

        run(test, FakeShed("vz", backend="vz"))

    def test_an_unknown_shed_is_not_mine(self) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            assert await api.resolve("ghost") is None

        run(test, WEB)

    @pytest.mark.parametrize("name", ["Web", "../web", "a b", "web/connect/1", "x" * 64, ""])
    def test_impossible_names_are_not_mine_without_asking(self, name: str) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            assert await api.resolve(name) is None
            assert fake.requests == 0

        run(test, WEB)

    @pytest.mark.parametrize("status", ["stopped", "starting", "error"])
    def test_a_shed_not_running_says_how_to_start_it(self, status: str) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            with pytest.raises(BackendError) as e:
                await api.resolve("web")
            assert e.value.code == "SHED_NOT_RUNNING" and e.value.status == 503
            assert status in e.value.message and "`shed start web`" in e.value.message
            assert e.value.shed == "web"

        run(test, FakeShed("web", status=status, ip_address="172.30.0.3"))

    @pytest.mark.parametrize("ip", ["not-an-ip", "0.0.0.0", "224.0.0.1"])
    def test_an_unusable_ip_is_unavailable(self, ip: str) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            await unavailable(api)

        run(test, FakeShed("web", ip_address=ip))

    def test_info_returns_the_server_metadata(self) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            info = await api.info()
            assert info["name"] == "mini-desktop" and info["backend"] == "firecracker"

        run(test)


class TestFailures:
    @pytest.mark.parametrize("fail", ["500", "garbage", "drop"])
    def test_server_faults_are_unavailable(self, fail: str) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            fake.fail = fail
            await unavailable(api)
            with pytest.raises(BackendError):
                await api.info()

        run(test, WEB)

    def test_a_refused_connection_is_unavailable_and_only_the_log_names_the_address(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]

        async def main() -> BackendError:
            return await unavailable(ShedApiResolver(f"http://127.0.0.1:{port}"))

        with caplog.at_level(logging.WARNING, logger="splice.resolve"):
            e = asyncio.run(main())
        # the message is the client's error page: no address, no port (asyncio's
        # "Connect call failed ('127.0.0.1', port)" would give both)
        assert e.message == "shed-server could not be reached (Connection refused)."
        assert "127.0.0.1" not in e.message and str(port) not in e.message
        logged = [r.getMessage() for r in caplog.records]
        assert f"shed-server at 127.0.0.1:{port} could not be reached" in logged[-1]
        assert "(looking up shed 'web')" in logged[-1]

    def test_a_slow_server_times_out(self) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            fake.delay = 5.0
            started = time.monotonic()
            e = await unavailable(api)
            assert time.monotonic() - started < 1.0
            assert e.message == "shed-server did not answer within 0.1s."
            fake.delay = 0.0
            assert await api.resolve("web") is not None  # the timed-out connection is gone

        run(test, WEB, timeout=0.1)

    def test_rejects_non_http_urls(self) -> None:
        for url in ("https://h:1", "h:1", "http://"):
            with pytest.raises(ValueError):
                ShedApiResolver(url)


class TestKeepAlive:
    def test_sequential_lookups_share_one_connection(self) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            for _ in range(25):
                assert await api.resolve("web") is not None
                assert await api.resolve("ghost") is None
            await api.info()
            assert (fake.connections, fake.requests, api.connections_opened) == (1, 51, 1)

        run(test, WEB)

    def test_reconnects_when_the_server_closed_the_idle_connection(self) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            assert await api.resolve("web") is not None
            await fake.drop_connections()
            assert await api.resolve("web") is not None
            assert fake.connections == 2

        run(test, WEB)

    def test_concurrent_lookups_are_bounded(self) -> None:
        async def test(fake: FakeShedServer, api: ShedApiResolver) -> None:
            fake.delay = 0.02
            for i in range(30):
                fake.add_shed(f"s{i}", ip_address=f"10.0.0.{i + 1}")
            eps = await asyncio.gather(*(api.resolve(f"s{i}") for i in range(30)))
            assert [ep.address for ep in eps if ep] == [f"10.0.0.{i + 1}" for i in range(30)]
            assert fake.connections == MAX_CONNECTIONS
            fake.connections = 0
            await api.resolve("s0")
            assert fake.connections == 0  # one of them stayed idle

        run(test)
