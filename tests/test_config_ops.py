"""``workers``: its default (one per core) and each worker's share of the connection limits.

The arithmetic is checked exhaustively for small limits and worker counts; a real
``Worker`` (the control channel's handlers, in this process, on loopback) shows the
shares are applied at start and again at every reload.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import uvloop

from splice.config import Config, parse_config
from splice.config_ops import MAX_WORKERS, share_limits, worker_share
from splice.errors import ConfigError
from splice.service import Worker


def config(**extra: Any) -> dict[str, Any]:
    return {"domains": ["x.test"], "listen": [{"address": "127.0.0.1:0"}], **extra}


def test_without_a_workers_key_there_is_one_worker_per_core() -> None:
    cores = len(os.sched_getaffinity(0))
    assert parse_config(config()).workers == cores
    assert parse_config(config(workers="auto")).workers == cores
    assert parse_config(config(workers=1)).workers == 1
    assert parse_config(config(workers=3)).workers == 3


@pytest.mark.parametrize("bad", [0, -1, MAX_WORKERS + 1, "all", True, 2.0])
def test_workers_must_be_auto_or_a_count(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^workers: .* must be 'auto' or an integer"):
        parse_config(config(workers=bad))


@pytest.mark.parametrize("workers", range(1, 13))
def test_the_shares_of_a_limit_add_up_to_it_and_none_is_below_one(workers: int) -> None:
    for limit in range(0, 40):
        shares = [worker_share(limit, workers, i) for i in range(workers)]
        if limit == 0:
            assert shares == [0] * workers  # no limit stays no limit
            continue
        assert sum(shares) == max(limit, workers), (limit, shares)
        assert min(shares) >= 1, (limit, shares)
        assert max(shares) - min(shares) <= 1, (limit, shares)  # as even as it gets
        assert shares == sorted(shares, reverse=True), (limit, shares)  # extras go first


def test_a_share_names_its_numbers() -> None:
    assert [worker_share(10, 4, i) for i in range(4)] == [3, 3, 2, 2]
    assert [worker_share(3, 4, i) for i in range(4)] == [1, 1, 1, 1]
    assert worker_share(7, 1, 0) == 7
    for index in (-1, 4):
        with pytest.raises(ValueError, match="worker index"):
            worker_share(10, 4, index)


def _unlimited(cfg: Config) -> Config:
    """``cfg`` with both global connection limits at 0 (unlimited)."""
    return dataclasses.replace(cfg, max_connections=0, max_connections_per_shed=0)


def test_share_limits_splits_every_connection_limit_and_nothing_else() -> None:
    cfg = parse_config(
        config(
            max_connections=10,
            max_connections_per_shed=5,
            sheds={
                "alpha": {"address": "10.0.0.1", "max_connections": 3},
                "beta": {"address": "10.0.0.2"},  # 0: the global per-shed limit applies
            },
        )
    )
    got = [share_limits(cfg, 4, i) for i in range(4)]
    assert [c.max_connections for c in got] == [3, 3, 2, 2]
    assert [c.max_connections_per_shed for c in got] == [2, 1, 1, 1]
    assert [c.sheds["alpha"].max_connections for c in got] == [1, 1, 1, 1]
    assert [c.sheds["beta"].max_connections for c in got] == [0, 0, 0, 0]
    for c in got:  # the rest of the config is untouched
        assert _unlimited(dataclasses.replace(c, sheds=cfg.sheds)) == _unlimited(cfg)
        assert c.sheds["alpha"].address == "10.0.0.1" and c.sheds["alpha"].name == "alpha"
    assert share_limits(cfg, 1, 0) == cfg  # one worker: its share is the whole


def test_a_worker_enforces_its_share_at_start_and_after_each_reload() -> None:
    """The handlers the supervisor calls over the control channel, on a real Server."""
    first = config(workers=2, max_connections=5, sheds={"alpha": {"address": "10.0.0.1"}})
    alpha3 = {"alpha": {"address": "10.0.0.1", "max_connections": 3}}
    # (the file at each reload, worker 1's max_connections, per-shed, alpha's): another
    # worker count in the file changes nothing, the running count (2) stays
    reloads = [
        (config(workers=2, max_connections=2), (1, 0, None)),
        (config(max_connections_per_shed=9, sheds=alpha3), (0, 4, 1)),
        (config(workers=1, max_connections=7), (3, 0, None)),
    ]

    async def main() -> None:
        worker = Worker()
        answer = await worker.start(first, index=1, workers=2)
        assert answer["pid"] == os.getpid()
        try:
            server = worker.server
            assert server is not None and server.ctx is not None
            assert (server.cfg.workers, server.cfg.max_connections) == (2, 2)  # 3 + 2
            for data, (total, per_shed, alpha) in reloads:
                await worker.reload(data)
                cfg = server.cfg
                assert server.ctx.cfg is cfg and cfg.workers == 2
                assert (cfg.max_connections, cfg.max_connections_per_shed) == (total, per_shed)
                if alpha is not None:
                    assert cfg.sheds["alpha"].max_connections == alpha
        finally:
            assert worker.server is not None
            await worker.server.stop()

    uvloop.run(main())
