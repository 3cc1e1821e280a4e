"""ResolverChain: cache, TTLs, single-flight, stale window; time is a hand-moved clock."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from scripts.fake_shed_server import FakeShed, FakeShedServer
from splice.errors import BackendError, RouteError, SpliceError
from splice.resolve.base import Endpoint
from splice.resolve.chain import ResolverChain
from splice.resolve.shed_api import ShedApiResolver
from splice.resolve.static import StaticResolver

TTL, NEG, STALE = 5.0, 1.0, 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A resolver doing "I/O" whose answers the test sets."""

    kind = "scripted"
    synchronous = False

    def __init__(self, **answers: Endpoint | SpliceError | Exception | None) -> None:
        self.answers = answers
        self.calls: Counter[str] = Counter()
        self.closed = False

    def lookup_now(self, shed: str) -> Endpoint | None:
        return None

    async def resolve(self, shed: str) -> Endpoint | None:
        self.calls[shed] += 1
        answer = self.answers.get(shed)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        self.closed = True


def ep(shed: str, address: str | None = "10.0.0.1", source: str = "scripted") -> Endpoint:
    return Endpoint(shed, address, source=source)


def down() -> BackendError:
    return BackendError("shed-server is down", code="RESOLVER_UNAVAILABLE")


def chain_of(*resolvers: Any, clock: Clock, maxsize: int = 4096) -> ResolverChain:
    return ResolverChain(
        resolvers, ttl=TTL, negative_ttl=NEG, stale=STALE, maxsize=maxsize, timer=clock
    )


async def raises(chain: ResolverChain, shed: str, code: str) -> SpliceError:
    with pytest.raises(SpliceError) as e:
        await chain.resolve(shed)
    assert e.value.code == code
    return e.value


def with_fake(test: Callable[[FakeShedServer, ResolverChain, Clock], Awaitable[None]]) -> None:
    async def main() -> None:
        async with FakeShedServer([FakeShed("web", ip_address="172.30.0.3")]) as fake:
            clock = Clock()
            chain = chain_of(ShedApiResolver(fake.base_url, timeout=1.0), clock=clock)
            try:
                await test(fake, chain, clock)
            finally:
                await chain.close()

    asyncio.run(main())


class TestCached:
    def test_static_answers_first_and_never_touches_the_cache(self) -> None:
        scripted = Scripted(a=ep("a"))
        chain = chain_of(StaticResolver({"a": "10.9.9.9"}), scripted, clock=Clock())
        assert chain.cached("a") == Endpoint("a", "10.9.9.9", source="static")
        assert (chain.hits, chain.misses, chain.entries(), scripted.calls) == (0, 0, [], {})

    def test_an_all_static_chain_answers_unknown_names_at_once(self) -> None:
        chain = chain_of(StaticResolver({"a": "10.9.9.9"}), clock=Clock())
        with pytest.raises(RouteError) as e:
            chain.cached("b")
        assert e.value.code == "SHED_NOT_FOUND"
        assert asyncio.run(chain.resolve("a")).address == "10.9.9.9"

    def test_a_miss_says_ask(self) -> None:
        assert chain_of(Scripted(), clock=Clock()).cached("a") is None


class TestTtl:
    def test_answers_are_cached_for_ttl_then_asked_again(self) -> None:
        clock, scripted = Clock(), Scripted(a=ep("a"))
        chain = chain_of(scripted, clock=clock)
        assert asyncio.run(chain.resolve("a")) == ep("a")
        clock.now += TTL - 0.01
        assert chain.cached("a") == ep("a")
        scripted.answers["a"] = ep("a", "10.0.0.2")
        clock.now += 0.02
        assert chain.cached("a") is None
        assert asyncio.run(chain.resolve("a")).address == "10.0.0.2"
        assert (scripted.calls["a"], chain.hits, chain.misses) == (2, 1, 2)

    def test_size_is_bounded(self) -> None:
        scripted = Scripted(**{f"s{i}": ep(f"s{i}") for i in range(10)})
        chain = chain_of(scripted, clock=Clock(), maxsize=3)

        async def main() -> None:
            for i in range(10):
                await chain.resolve(f"s{i}")

        asyncio.run(main())
        assert [name for name, _, _ in chain.entries()] == ["s7", "s8", "s9"]


class TestNegative:
    def test_not_found_is_cached_for_negative_ttl(self) -> None:
        clock, scripted = Clock(), Scripted()
        chain = chain_of(scripted, clock=clock)
        asyncio.run(raises(chain, "ghost", "SHED_NOT_FOUND"))
        with pytest.raises(RouteError):
            chain.cached("ghost")
        clock.now += NEG + 0.01
        assert chain.cached("ghost") is None
        assert scripted.calls["ghost"] == 1

    def test_cached_errors_are_fresh_exceptions(self) -> None:
        chain = chain_of(Scripted(), clock=Clock())
        first = asyncio.run(raises(chain, "ghost", "SHED_NOT_FOUND"))
        second = asyncio.run(raises(chain, "ghost", "SHED_NOT_FOUND"))
        assert first is not second and second.shed == "ghost"
        assert chain.entries() == [("ghost", "SHED_NOT_FOUND", 0.0)]

    def test_not_running_is_cached_and_forgets_the_good_answer(self) -> None:
        clock, scripted = Clock(), Scripted(a=ep("a"))
        chain = chain_of(scripted, clock=clock)
        asyncio.run(chain.resolve("a"))
        clock.now += TTL + 1
        scripted.answers["a"] = BackendError("stopped", code="SHED_NOT_RUNNING")
        asyncio.run(raises(chain, "a", "SHED_NOT_RUNNING"))
        with pytest.raises(BackendError):
            chain.cached("a")
        clock.now += NEG + 0.01
        scripted.answers["a"] = down()
        asyncio.run(raises(chain, "a", "RESOLVER_UNAVAILABLE"))  # nothing stale to serve


class TestStale:
    def test_serves_the_last_good_answer_while_the_api_fails_then_gives_up(self) -> None:
        async def test(fake: FakeShedServer, chain: ResolverChain, clock: Clock) -> None:
            good = await chain.resolve("web")
            fake.fail = "500"
            clock.now += TTL + 1
            assert await chain.resolve("web") == good
            assert (chain.stale, fake.requests) == (1, 2)
            assert chain.cached("web") == good  # held for negative_ttl: no new request
            assert (chain.stale, fake.requests) == (2, 2)
            clock.now += STALE - 1 - 0.01
            assert await chain.resolve("web") == good
            clock.now += 0.02
            e = await raises(chain, "web", "RESOLVER_UNAVAILABLE")
            assert e.status == 503 and "HTTP 500" in e.message
            with pytest.raises(BackendError):
                chain.cached("web")  # the failure itself is cached for negative_ttl

        with_fake(test)

    def test_a_stopped_server_is_stale_then_unavailable(self) -> None:
        async def test(fake: FakeShedServer, chain: ResolverChain, clock: Clock) -> None:
            good = await chain.resolve("web")
            await fake.stop()
            clock.now += TTL + STALE - 1
            assert await chain.resolve("web") == good
            clock.now += 1 + NEG
            await raises(chain, "web", "RESOLVER_UNAVAILABLE")
            await fake.start()  # for the context manager's stop

        with_fake(test)

    def test_recovers_when_the_api_comes_back(self) -> None:
        async def test(fake: FakeShedServer, chain: ResolverChain, clock: Clock) -> None:
            await chain.resolve("web")
            fake.fail = "drop"
            clock.now += TTL + 1
            await chain.resolve("web")
            fake.fail = None
            fake.sheds["web"].ip_address = "172.30.0.9"
            clock.now += NEG + 0.01
            assert (await chain.resolve("web")).address == "172.30.0.9"
            assert chain.cached("web") is not None and chain.hits == 1

        with_fake(test)


class TestSingleFlight:
    def test_a_hundred_concurrent_lookups_make_one_request(self) -> None:
        async def test(fake: FakeShedServer, chain: ResolverChain, clock: Clock) -> None:
            fake.delay = 0.05
            eps = await asyncio.gather(*(chain.resolve("web") for _ in range(100)))
            assert set(eps) == {Endpoint("web", "172.30.0.3", source="shed-api")}
            assert (fake.requests, chain.misses) == (1, 100)

        with_fake(test)

    def test_concurrent_misses_share_one_negative_answer(self) -> None:
        async def test(fake: FakeShedServer, chain: ResolverChain, clock: Clock) -> None:
            fake.delay = 0.05
            got = await asyncio.gather(
                *(chain.resolve("ghost") for _ in range(50)), return_exceptions=True
            )
            assert all(isinstance(e, RouteError) and e.code == "SHED_NOT_FOUND" for e in got)
            assert len({id(e) for e in got}) == 50 and fake.requests == 1

        with_fake(test)

    def test_a_caller_giving_up_does_not_cancel_the_others(self) -> None:
        async def test(fake: FakeShedServer, chain: ResolverChain, clock: Clock) -> None:
            fake.delay = 0.05
            quitter = asyncio.create_task(chain.resolve("web"))
            stayer = asyncio.create_task(chain.resolve("web"))
            while fake.requests == 0:  # the lookup is in flight (the fake is in its delay)
                await asyncio.sleep(0.001)
            quitter.cancel()
            assert (await stayer).address == "172.30.0.3"
            assert quitter.cancelled() and fake.requests == 1

        with_fake(test)


class TestOrder:
    def test_config_order_holds_for_a_trailing_static_resolver(self) -> None:
        scripted = Scripted(a=ep("a"))
        chain = chain_of(
            scripted, StaticResolver({"a": "10.9.9.9", "b": "10.8.8.8"}), clock=Clock()
        )
        assert chain.cached("b") is None  # the static resolver is behind one doing I/O
        assert asyncio.run(chain.resolve("a")).source == "scripted"
        assert asyncio.run(chain.resolve("b")).source == "static"
        assert chain.cached("b") is not None and scripted.calls["b"] == 1

    def test_an_unavailable_resolver_falls_through_to_the_next(self) -> None:
        chain = chain_of(Scripted(a=down()), Scripted(a=ep("a", source="metadata")), clock=Clock())
        assert asyncio.run(chain.resolve("a")).source == "metadata"

    def test_unknown_everywhere_but_one_unavailable_is_unavailable(self) -> None:
        chain = chain_of(Scripted(a=down()), Scripted(), clock=Clock())
        asyncio.run(raises(chain, "a", "RESOLVER_UNAVAILABLE"))

    def test_a_resolver_bug_costs_one_lookup(self, caplog: pytest.LogCaptureFixture) -> None:
        chain = chain_of(Scripted(a=KeyError("bug")), clock=Clock())
        with caplog.at_level(logging.ERROR, "splice.resolve"):
            asyncio.run(raises(chain, "a", "RESOLVER_UNAVAILABLE"))
        assert "resolver scripted failed on 'a'" in caplog.text


class TestHousekeeping:
    def test_entries_show_answers_errors_and_ages(self) -> None:
        clock = Clock()
        chain = chain_of(Scripted(a=ep("a")), clock=clock)
        asyncio.run(chain.resolve("a"))
        clock.now += 0.5
        asyncio.run(raises(chain, "b", "SHED_NOT_FOUND"))
        clock.now += 0.25
        assert chain.entries() == [("a", ep("a"), 0.75), ("b", "SHED_NOT_FOUND", 0.25)]

    def test_invalidate_forgets_a_shed(self) -> None:
        scripted = Scripted(a=ep("a"))
        chain = chain_of(scripted, clock=Clock())
        asyncio.run(chain.resolve("a"))
        chain.invalidate("a")
        assert chain.cached("a") is None

    def test_close_cancels_lookups_and_closes_resolvers(self) -> None:
        class Hanging(Scripted):
            async def resolve(self, shed: str) -> Endpoint | None:
                await asyncio.sleep(3600)
                return None

        async def main() -> None:
            hanging = Hanging()
            chain = chain_of(hanging, clock=Clock())
            waiter = asyncio.create_task(chain.resolve("a"))
            await asyncio.sleep(0)
            await chain.close()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert hanging.closed

        asyncio.run(main())
