"""The access log: a line per connection and target (and per store request), in batches.

A connection gets one line, and one more each time its requests move to another
target (``Context.run_ended``): a front's pooled keep-alive connection carries many
sheds, and each is logged under its own name with its own bytes.

A ``logging`` call per connection costs 10-20 µs, as much as the rest of the
connection; so lines are formatted into a list and written by a periodic flush
(every ``FLUSH_EVERY`` seconds, and at shutdown). No payload byte is ever logged.
Egress connections add who and where: the listener mode, the proxy user, the address
dialled and the policy rule that allowed or refused the destination. Requests
served by the record/replay store get a ``store`` line each: what the store did.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Final, TextIO

#: how stale a line may be before it reaches the log
FLUSH_EVERY: Final = 0.25
#: an egress connection's (mode, proxy user, address dialled, policy rule); "" or None: -
Egress = tuple[str, str | None, str, str | None]


def _word(value: str | None) -> str:
    """One space-free token of a text line: ``-`` for nothing, JSON-quoted if needed."""
    if not value:
        return "-"
    return value if value.isprintable() and " " not in value else json.dumps(value)


class AccessLog:
    def __init__(self, stream: TextIO | None = None, fmt: str = "text") -> None:
        self.stream = stream or sys.stderr
        self.json = fmt == "json"
        self._lines: list[str] = []

    def line(
        self,
        client: tuple[str, int],
        host: str,
        shed: str,
        port: int,
        up: int,
        down: int,
        ms: float,
        outcome: str,
        egress: Egress | None = None,
    ) -> None:
        if self.json:
            rec = {
                "ts": round(time.time(), 3), "client": f"{client[0]}:{client[1]}", "host": host,
                "shed": shed, "port": port, "bytes_up": up, "bytes_down": down,
                "ms": round(ms, 2), "outcome": outcome,
            }  # fmt: skip
            if egress is not None:
                rec |= dict(zip(("mode", "user", "dst", "rule"), egress, strict=True))
            self._lines.append(json.dumps(rec))
            return
        who = ""
        if egress is not None:
            mode, user, dst, rule = (_word(v) for v in egress)
            who = f"mode={mode} user={user} dst={dst} rule={rule} "
        self._lines.append(
            f"access {client[0]}:{client[1]} host={host or '-'} shed={shed or '-'} "
            f"port={port or '-'} up={up} down={down} ms={ms:.2f} {who}{outcome}"
        )

    def exchange(
        self,
        client: str,
        host: str,
        port: int,
        mode: str,
        user: str | None,
        key: str,
        ms: float,
        outcome: str,
    ) -> None:
        """One request of the record/replay store: HIT, RECORDED, FORWARDED or an error
        code, and the key's first 12 digits (``splice store show`` takes a prefix)."""
        if self.json:
            rec = {
                "ts": round(time.time(), 3), "store": True, "client": client, "host": host,
                "port": port, "mode": mode, "user": user, "key": key[:12], "ms": round(ms, 2),
                "outcome": outcome,
            }  # fmt: skip
            self._lines.append(json.dumps(rec))
            return
        self._lines.append(
            f"store {client} host={host or '-'} port={port or '-'} mode={mode} "
            f"user={_word(user)} key={key[:12] or '-'} ms={ms:.2f} {outcome}"
        )

    def flush(self) -> None:
        if self._lines:
            self.stream.write("\n".join(self._lines) + "\n")
            self.stream.flush()
            self._lines.clear()
