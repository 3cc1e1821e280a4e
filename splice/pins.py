"""Placeholder sockets that hold each listener's port while workers bind it with SO_REUSEPORT.

The supervisor binds (never listens on) one socket per ``[[listen]]`` entry, with
SO_REUSEADDR and SO_REUSEPORT like the workers' listeners: a port taken by another
program fails here, before any worker starts, and port 0 becomes one concrete port
that every worker (and every restarted worker) binds. Only listening sockets share
connections, so a placeholder never takes one. A reload keeps the pins it still needs.
"""

from __future__ import annotations

import copy
import socket
from collections import Counter
from collections.abc import Mapping
from typing import Any

from splice.config import Config

#: (host, mode, port) for a fixed port; (host, mode, -n) for the n-th port-0 entry
Key = tuple[str, str, int]


def placeholder(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Pins:
    def __init__(self) -> None:
        self.socks: dict[Key, socket.socket] = {}

    def pin(self, cfg: Config, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[Key, Any]]:
        """``data`` with every listen address made concrete, and the pins it uses.

        Raises:
            OSError: a port cannot be bound (in use by another program, privileged...).
        """
        new: dict[Key, socket.socket] = {}
        zeros: Counter[tuple[str, str]] = Counter()
        listen = copy.deepcopy(list(data["listen"]))
        try:
            for entry, lc in zip(listen, cfg.listen, strict=True):
                if lc.port:
                    key: Key = (lc.host, lc.mode, lc.port)
                else:
                    zeros[lc.host, lc.mode] += 1
                    key = (lc.host, lc.mode, -zeros[lc.host, lc.mode])
                sock = new.get(key) or self.socks.get(key) or placeholder(lc.host, lc.port)
                new[key] = sock
                entry["address"] = hostport(lc.host, sock.getsockname()[1])
        except OSError:
            self._drop(new, keep=self.socks)
            raise
        return {**data, "listen": listen}, new

    def commit(self, new: dict[Key, socket.socket]) -> None:
        """Adopt ``new`` (from ``pin``); close the pins it no longer uses."""
        self._drop(self.socks, keep=new)
        self.socks = new

    def abandon(self, new: dict[Key, socket.socket]) -> None:
        """Forget ``new`` (a refused reload): close what it bound that is not in use."""
        self._drop(new, keep=self.socks)

    def close(self) -> None:
        self._drop(self.socks, keep={})
        self.socks = {}

    @staticmethod
    def _drop(socks: Mapping[Key, socket.socket], keep: Mapping[Key, socket.socket]) -> None:
        kept = {id(s) for s in keep.values()}
        for sock in socks.values():
            if id(sock) not in kept:
                sock.close()
