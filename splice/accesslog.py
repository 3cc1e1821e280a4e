"""The access log: one line per connection, written in batches.

A ``logging`` call per connection costs 10-20 µs, as much as the rest of the
connection; so lines are formatted into a list and written by a periodic flush
(every ``FLUSH_EVERY`` seconds, and at shutdown). No payload byte is ever logged.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

#: how stale a line may be before it reaches the log
FLUSH_EVERY = 0.25


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
    ) -> None:
        if self.json:
            rec = {
                "ts": round(time.time(), 3), "client": f"{client[0]}:{client[1]}", "host": host,
                "shed": shed, "port": port, "bytes_up": up, "bytes_down": down,
                "ms": round(ms, 2), "outcome": outcome,
            }  # fmt: skip
            self._lines.append(json.dumps(rec))
            return
        self._lines.append(
            f"access {client[0]}:{client[1]} host={host or '-'} shed={shed or '-'} "
            f"port={port or '-'} up={up} down={down} ms={ms:.2f} {outcome}"
        )

    def flush(self) -> None:
        if self._lines:
            self.stream.write("\n".join(self._lines) + "\n")
            self.stream.flush()
            self._lines.clear()
