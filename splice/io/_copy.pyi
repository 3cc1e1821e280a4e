"""Types of the C copy loop (splice/io/_copy.c), built with the compiled build."""

def copy(
    src_fd: int, dst_fd: int, budget: int, short_ok: bool, /
) -> tuple[int, int, bytearray | None]: ...
