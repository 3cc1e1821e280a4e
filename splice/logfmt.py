"""Process logging: ``text`` (a human line) or ``json`` (one object per line), on stderr.

Both formats carry the same fields: time, level, logger, message, and the worker
index when the process is one of several. Log messages name connections, sheds
and addresses, never payload bytes; the access log (``splice.accesslog``) follows
the same format choice and writes its own lines.
"""

from __future__ import annotations

import json
import logging
import sys

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """``{"ts": 1700000000.123, "level": "info", "logger": "splice", "msg": "..."}``."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        rec: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            rec["worker"] = self.worker
        if record.exc_info:
            rec["exc"] = self.formatException(record.exc_info)
        return json.dumps(rec)


def setup_logging(level: str = "info", fmt: str = "text", worker: int | None = None) -> None:
    """Configure the root logger once per process (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        tag = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
