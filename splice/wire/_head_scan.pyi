"""Types of the C head and ClientHello scanners (splice/wire/_head_scan.c), built with the
compiled build."""

def scan_request(
    buf: bytes | bytearray, max_head: int, names: tuple[bytes, ...], /
) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes] | None: ...
def scan_response(
    buf: bytes | bytearray, max_head: int, names: tuple[bytes, ...], /
) -> tuple[bytes, int, list[tuple[bytes, bytes]], bytes] | None: ...
def scan_hello(
    buf: bytes | bytearray | memoryview, max_size: int, /
) -> tuple[str | None, tuple[str, ...], int] | None: ...
