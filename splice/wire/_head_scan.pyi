"""Types of the C request-head scanner (splice/wire/_head_scan.c), built with the compiled build."""

def scan(
    buf: bytes | bytearray, max_head: int, names: tuple[bytes, ...], /
) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes] | None: ...
