"""A SpliceError -> one complete HTTP/1.1 error response (status line, headers, body).

The body is a small HTML page (readable on a phone) or, when the client asks for
``application/json``, ``{"error": {"code", "message", "shed", "port", "ports"}}``. Every
response carries ``X-Shed-Error: CODE``, ``Connection: close`` and ``Cache-Control:
no-store``. Everything user-derived (shed, message, labels, link host) is HTML-escaped;
links to declared ports are offered only when the host and shed are plainly safe.
"""

from __future__ import annotations

import json
import re
from html import escape

from splice.errors import CODES, SpliceError
from splice.routing.names import MAX_NAME, canonical_label, is_shed_name

#: reason phrases for every status in CODES (the status line needs one)
REASONS: dict[int, str] = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

#: what to try next, per code; {shed} and {port} are filled in already escaped
_HINTS: dict[str, str] = {
    "BAD_REQUEST": "Check the address: the host name or request line is malformed.",
    "HEAD_TIMEOUT": "The request was sent too slowly; try again.",
    "HEAD_TOO_LARGE": "Send fewer or smaller headers; large cookies are the usual cause.",
    "METHOD_NOT_ALLOWED": "Use an ordinary HTTP method such as GET or POST.",
    "UNKNOWN_HOST": "Use an address of the form <code>PORT-NAME.&lt;domain&gt;</code>, "
    "for example <code>3000-my-shed.&lt;domain&gt;</code>.",
    "SHED_NOT_FOUND": "Check the spelling; <code>shed list</code> shows your sheds.",
    "INVALID_PORT": "Ports are 1 to 65535, written without leading zeros.",
    "PORT_NOT_EXPOSED": "Use one of the ports the shed declares.",
    "CONNECT_FAILED": "Start the service on port {port} inside the shed, "
    "listening on <code>0.0.0.0</code> (not <code>127.0.0.1</code>).",
    "SHED_NOT_RUNNING": "Start it with <code>shed start {shed}</code>.",
    "RESOLVER_UNAVAILABLE": "The shed server may be restarting; try again shortly.",
    "TOO_MANY_CONNECTIONS": "Try again shortly.",
    "UPSTREAM_TIMEOUT": "The shed may be overloaded; try again, or restart the shed.",
    "BAD_RESPONSE": "The server on port {port} inside the shed answered with malformed "
    "HTTP; <code>curl -v</code> it from inside the shed.",
    "INTERNAL_ERROR": "This is a bug in splice; the proxy log has the details.",
    "DESTINATION_DENIED": "Ask for the destination to be added to the egress policy's "
    "<code>[forward] allow</code> list.",
    "PORT_DENIED": "Use a port the egress policy allows (<code>[forward] ports</code>), "
    "or name the port in an allow pattern.",
    "PRIVATE_ADDRESS": "Private, loopback and link-local addresses are refused; "
    "<code>[forward] allow_networks</code> can admit a network on purpose.",
    "DNS_FAILED": "Check the name; the gateway's resolver could not find it.",
    "PROXY_AUTH_REQUIRED": "Give the proxy user and password, e.g. "
    "<code>curl -x http://USER:PASS@proxy:3128</code>.",
    "REPLAY_MISS": "Record the exchange first (store mode <code>record</code> or "
    "<code>record-new</code>), then replay.",
    "TUNNEL_NOT_REPLAYABLE": "Enable <code>intercept_tls</code> to record HTTPS, "
    "or replay plain HTTP only.",
}

#: a link host we will put in an href: host name or [v6] literal, optional :port, nothing else
_LINK_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
#: the q parameter of a media range (RFC 9110 qvalue); an unreadable q counts as absent
_QVALUE = re.compile(r"(?:^|;)\s*q\s*=\s*([01](?:\.[0-9]{0,3})?)\s*(?:;|$)")

_STYLE = (
    ":root{color-scheme:light dark}"
    "body{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:2em auto;padding:0 1em}"
    "code{font-size:.95em}small{opacity:.7}"
)
#: the page has no scripts or subresources; forbid them so echoed text can never run
_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def wants_json(accept: bytes | None) -> bool:
    """True when the Accept header prefers JSON (``application/json`` or ``*/*+json``) to HTML."""
    if not accept:
        return False
    q_json = q_html = 0.0
    for media_range in accept.decode("latin-1").lower().split(","):
        kind, _, params = media_range.partition(";")
        kind = kind.strip()
        m = _QVALUE.search(params)
        q = 1.0 if m is None else float(m[1])
        if kind == "application/json" or kind.endswith("+json"):
            q_json = max(q_json, q)
        elif kind == "text/html":
            q_html = max(q_html, q)
    return q_json > q_html


#: seconds a client should wait before retrying, by error code (Retry-After)
RETRY_AFTER: dict[str, int] = {
    "TOO_MANY_CONNECTIONS": 1,
    "SHED_NOT_RUNNING": 5,
    "RESOLVER_UNAVAILABLE": 5,
}


def render_error(
    err: SpliceError,
    *,
    as_json: bool = False,
    link_host: str | None = None,
    scheme: str = "http",
    retry_after: int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The whole response for ``err``; the connection is to be closed after it.

    ``headers`` are extra fields (``Proxy-Authenticate``, ``Allow``), already safe.
    """
    if as_json:
        body = _json_body(err)
        content_type = "application/json"
    else:
        body = _html_body(err, link_host, "https" if scheme == "https" else "http")
        content_type = "text/html; charset=utf-8"
    lines = [
        f"HTTP/1.1 {err.status} {REASONS.get(err.status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        f"X-Shed-Error: {err.code}",
        "Connection: close",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
    ]
    if not as_json:
        lines.append(f"Content-Security-Policy: {_CSP}")
    if retry_after is not None:
        lines.append(f"Retry-After: {max(0, retry_after)}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _json_body(err: SpliceError) -> bytes:
    error = {
        "code": err.code,
        "message": err.message,
        "shed": err.shed,
        "port": err.port,
        "ports": [{"port": port, "label": label} for port, label in err.ports],
    }
    return json.dumps({"error": error}, separators=(",", ":")).encode("ascii")


def _html_body(err: SpliceError, link_host: str | None, scheme: str) -> bytes:
    title = CODES[err.code][1]
    shed = escape(err.shed) if err.shed else "NAME"
    port = str(err.port) if err.port is not None else "N"
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{err.status} {escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if err.message != title:
        parts.append(f"<p>{escape(err.message)}</p>")
    if err.shed or err.port is not None:
        parts.append(f"<p>{_facts(err)}</p>")
    hint = _HINTS.get(err.code)
    if hint:
        parts.append(f"<p>{hint.format(shed=shed, port=port)}</p>")
    if err.ports:
        parts.append(_port_list(err, link_host, scheme))
    parts.append(f"<p><small>splice &middot; {err.status} {err.code}</small></p></body></html>\n")
    return "".join(parts).encode("utf-8", "replace")


def _facts(err: SpliceError) -> str:
    facts = []
    if err.shed:
        facts.append(f"Shed: <code>{escape(err.shed)}</code>")
    if err.port is not None:
        facts.append(f"Port: <code>{err.port}</code>")
    return " &middot; ".join(facts)


def _port_list(err: SpliceError, link_host: str | None, scheme: str) -> str:
    """The declared ports, as links when the shed name and link host are safe to build on."""
    shed = err.shed if err.shed and is_shed_name(err.shed) else None
    host = link_host if link_host and _LINK_HOST.fullmatch(link_host) else None
    items = []
    for port, label in err.ports:
        text = f"{port} {escape(label)}" if label else str(port)
        if shed and host:
            text = f'<a href="{escape(_port_url(scheme, shed, port, host))}">{text}</a>'
        items.append(f"<li>{text}</li>")
    return f"<ul>{''.join(items)}</ul>"


def _port_url(scheme: str, shed: str, port: int, link_host: str) -> str:
    """Canonical ``PORT-NAME.host`` link; ``NAME.host/port/N/`` when that label is too long."""
    label = canonical_label(shed, port)
    if len(label) <= MAX_NAME:
        return f"{scheme}://{label}.{link_host}/"
    return f"{scheme}://{shed}.{link_host}/port/{port}/"
