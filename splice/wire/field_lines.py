"""The field lines of an HTTP/1.1 head: the strict shape check, and the fields a parser wants.

Shared by the request and the response parser. Both are two regex passes in C over
the head: a ``fullmatch`` proves every line is ``token ":" value CRLF`` with legal
value bytes, then a ``findall`` over the lower-cased head picks the wanted fields.
The wanted-field pattern starts with the CRLF that ends the line before, a literal
prefix: sre skips from one CRLF to the next instead of trying the pattern at every
offset, as ``^`` with ``re.M`` makes it do (1.7 vs 2.3 µs for a typical response head).
"""

from __future__ import annotations

import re
from typing import Final

# field-line = field-name ":" OWS field-value OWS ; one CRLF-terminated line each,
# field-value chars are HTAB, SP, VCHAR, obs-text (RFC 9110 §5.5). No obs-fold.
FIELD_BLOCK: Final = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")


def field_finder(names: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """The pattern ``find_fields`` uses to pick ``names`` (lower-case) from a head."""
    return re.compile(rb"\r\n(" + b"|".join(re.escape(n) for n in names) + rb"):[ \t]*([^\r]*)")


def find_fields(
    low: bytes, start: int, end: int, finder: re.Pattern[bytes]
) -> list[tuple[bytes, bytes]]:
    """The wanted ``(name, value)`` pairs, in order, of the lower-cased head ``low``
    whose blank line starts at ``end``, searched from ``start`` (0 will do: the first
    line holds no CRLF); values without their surrounding whitespace. Call it on a
    head whose field lines ``FIELD_BLOCK`` took: then a value ends at the next CR."""
    return [(n, v.rstrip(b" \t")) for n, v in finder.findall(low, start, end)]
