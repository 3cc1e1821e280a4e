from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.errors import CODES, BackendError, ProtocolError, RouteError, SpliceError
from splice.pages import REASONS, render_error, wants_json

HOSTILE = "<script>alert('x')</script>\"&"

NOT_EXPOSED = RouteError(
    "Shed 'my-shed' does not expose port 9.",
    code="PORT_NOT_EXPOSED",
    shed="my-shed",
    port=9,
    ports=((3000, "app"), (5173, "")),
)


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def links(body: bytes) -> list[str]:
    return re.findall(r'href="([^"]*)"', body.decode())


class TestWantsJson:
    @pytest.mark.parametrize(
        "accept",
        [
            b"application/json",
            b"Application/JSON",
            b"application/json, text/plain, */*",
            b"application/problem+json",
            b"text/html;q=0.5, application/json;q=0.9",
            b"application/json;charset=utf-8",
            b"text/html;q=0, application/json",
            b"application/json;q=bogus",
        ],
    )
    def test_is_true_when_json_is_preferred(self, accept: bytes) -> None:
        assert wants_json(accept)

    @pytest.mark.parametrize(
        "accept",
        [
            None,
            b"",
            b"*/*",
            b"text/html",
            b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            b"text/html, application/json",
            b"application/json;q=0",
            b"application/json;q=0.5, text/html",
            b"application/jsonx",
            b"\xff\x00,;;;q=",
        ],
    )
    def test_is_false_for_browsers_curl_and_html_preferences(self, accept: bytes | None) -> None:
        assert not wants_json(accept)

    @given(st.binary(max_size=60))
    def test_never_raises(self, accept: bytes) -> None:
        assert wants_json(accept) in (True, False)


class TestRenderErrorHead:
    @pytest.mark.parametrize("code", sorted(CODES))
    @pytest.mark.parametrize("as_json", [False, True])
    def test_answers_every_code_with_its_status_and_the_common_headers(
        self, code: str, as_json: bool
    ) -> None:
        err = SpliceError(code=code)
        status, headers, body = split(render_error(err, as_json=as_json))
        assert status == f"HTTP/1.1 {err.status} {REASONS[err.status]}"
        assert headers["X-Shed-Error"] == code
        assert headers["Connection"] == "close"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Content-Length"] == str(len(body))
        assert "Retry-After" not in headers

    @pytest.mark.parametrize(
        ("err", "line"),
        [
            (ProtocolError(), "HTTP/1.1 400 Bad Request"),
            (RouteError(code="UNKNOWN_HOST"), "HTTP/1.1 404 Not Found"),
            (NOT_EXPOSED, "HTTP/1.1 403 Forbidden"),
            (BackendError(), "HTTP/1.1 502 Bad Gateway"),
            (BackendError(code="SHED_NOT_RUNNING"), "HTTP/1.1 503 Service Unavailable"),
            (ProtocolError(code="HEAD_TOO_LARGE"), "HTTP/1.1 431 Request Header Fields Too Large"),
        ],
    )
    def test_writes_the_right_status_line(self, err: SpliceError, line: str) -> None:
        assert render_error(err).startswith(line.encode() + b"\r\n")

    def test_labels_html_and_json_bodies(self) -> None:
        assert split(render_error(NOT_EXPOSED))[1]["Content-Type"] == "text/html; charset=utf-8"
        assert split(render_error(NOT_EXPOSED, as_json=True))[1]["Content-Type"] == (
            "application/json"
        )

    @pytest.mark.parametrize("code", ["TOO_MANY_CONNECTIONS", "SHED_NOT_RUNNING"])
    def test_adds_retry_after_when_given(self, code: str) -> None:
        _, headers, _ = split(render_error(BackendError(code=code), retry_after=5))
        assert headers["Retry-After"] == "5"

    def test_never_writes_a_negative_retry_after(self) -> None:
        _, headers, _ = split(render_error(BackendError(), retry_after=-3))
        assert headers["Retry-After"] == "0"

    def test_ends_the_head_with_one_blank_line(self) -> None:
        response = render_error(NOT_EXPOSED)
        assert response.count(b"\r\n\r\n") == 1
        assert b"\n" not in response.partition(b"\r\n\r\n")[0].replace(b"\r\n", b"")


class TestRenderErrorJson:
    def test_uses_the_shed_server_error_shape_plus_our_fields(self) -> None:
        _, _, body = split(render_error(NOT_EXPOSED, as_json=True))
        assert json.loads(body) == {
            "error": {
                "code": "PORT_NOT_EXPOSED",
                "message": "Shed 'my-shed' does not expose port 9.",
                "shed": "my-shed",
                "port": 9,
                "ports": [{"port": 3000, "label": "app"}, {"port": 5173, "label": ""}],
            }
        }

    def test_uses_nulls_and_the_standard_line_when_nothing_is_known(self) -> None:
        error = json.loads(split(render_error(RouteError(), as_json=True))[2])["error"]
        assert error == {
            "code": "SHED_NOT_FOUND",
            "message": CODES["SHED_NOT_FOUND"][1],
            "shed": None,
            "port": None,
            "ports": [],
        }

    def test_keeps_hostile_text_as_data(self) -> None:
        err = RouteError(HOSTILE + "\u2028é\ud800", shed=HOSTILE)
        body = split(render_error(err, as_json=True))[2]
        assert body.isascii()
        assert json.loads(body)["error"]["shed"] == HOSTILE


class TestRenderErrorHtml:
    def html(self, err: SpliceError, link_host: str | None = None, scheme: str = "http") -> str:
        return split(render_error(err, link_host=link_host, scheme=scheme))[2].decode()

    def test_is_a_small_phone_friendly_page(self) -> None:
        page = self.html(RouteError(code="UNKNOWN_HOST"))
        assert page.startswith("<!doctype html>")
        assert 'name="viewport"' in page
        assert "<style>" in page
        assert CODES["UNKNOWN_HOST"][1] in page
        assert len(page) < 2000

    def test_names_the_shed_and_port(self) -> None:
        page = self.html(BackendError(shed="my-shed", port=3000))
        assert "<code>my-shed</code>" in page
        assert "<code>3000</code>" in page

    def test_names_only_the_port_when_the_shed_is_unknown(self) -> None:
        page = self.html(RouteError(code="INVALID_PORT", port=70000))
        assert "Port: <code>70000</code>" in page
        assert "Shed:" not in page

    def test_tells_how_to_fix_a_refused_connection(self) -> None:
        page = self.html(BackendError(shed="my-shed", port=3000))
        assert "Start the service on port 3000 inside the shed" in page
        assert "0.0.0.0" in page

    def test_tells_how_to_start_a_stopped_shed(self) -> None:
        page = self.html(BackendError(code="SHED_NOT_RUNNING", shed="my-shed"))
        assert "<code>shed start my-shed</code>" in page

    @pytest.mark.parametrize("code", sorted(CODES))
    def test_has_a_hint_for_every_code(self, code: str) -> None:
        page = self.html(SpliceError(code=code))
        assert page.count("<p>") >= 2

    def test_links_declared_ports_in_canonical_form(self) -> None:
        page = self.html(NOT_EXPOSED, link_host="srv.test:8081", scheme="https")
        assert links(page.encode()) == [
            "https://3000-my-shed.srv.test:8081/",
            "https://5173-my-shed.srv.test:8081/",
        ]
        assert "app" in page

    def test_links_with_a_path_prefix_when_the_label_would_be_too_long(self) -> None:
        name = "a" * 60
        err = RouteError(code="PORT_NOT_EXPOSED", shed=name, port=1, ports=((3000, ""), (80, "")))
        assert links(render_error(err, link_host="srv.test")) == [
            f"http://{name}.srv.test/port/3000/",
            f"http://80-{name}.srv.test/",
        ]

    @pytest.mark.parametrize(
        "link_host",
        [
            None,
            "",
            "evil.example/x",
            'srv.test"><script>',
            "a@srv.test",
            "srv.test:80:80",
            "javascript:alert(1)//",
            "srv.test/../x",
            " srv.test",
        ],
    )
    def test_lists_ports_without_links_for_a_doubtful_link_host(
        self, link_host: str | None
    ) -> None:
        page = self.html(NOT_EXPOSED, link_host=link_host)
        assert links(page.encode()) == []
        assert "<li>3000" in page

    def test_lists_ports_without_links_for_a_doubtful_shed(self) -> None:
        err = RouteError(code="PORT_NOT_EXPOSED", shed="a.evil.example/", ports=((3000, ""),))
        assert links(render_error(err, link_host="srv.test")) == []

    def test_falls_back_to_http_for_an_unknown_scheme(self) -> None:
        page = self.html(NOT_EXPOSED, link_host="srv.test", scheme="javascript")
        assert links(page.encode())[0] == "http://3000-my-shed.srv.test/"

    def test_accepts_an_ipv6_link_host(self) -> None:
        page = self.html(NOT_EXPOSED, link_host="[::1]:8081")
        assert links(page.encode())[0] == "http://3000-my-shed.[::1]:8081/"

    def test_escapes_everything_user_derived(self) -> None:
        err = RouteError(
            HOSTILE,
            code="PORT_NOT_EXPOSED",
            shed=HOSTILE,
            port=9,
            ports=((3000, HOSTILE),),
        )
        page = self.html(err, link_host="srv.test")
        assert "<script>" not in page
        assert "&lt;script&gt;" in page
        assert "alert(&#x27;x&#x27;)" in page
        assert "&quot;&amp;" in page

    def test_escapes_a_hostile_shed_in_the_start_hint(self) -> None:
        page = self.html(BackendError(code="SHED_NOT_RUNNING", shed=HOSTILE))
        assert "<script>" not in page

    def test_survives_unencodable_text(self) -> None:
        response = render_error(RouteError("bad \ud800 text"))
        _, headers, body = split(response)
        assert headers["Content-Length"] == str(len(body))

    def test_forbids_scripts_on_the_page(self) -> None:
        _, headers, _ = split(render_error(NOT_EXPOSED))
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert headers["X-Content-Type-Options"] == "nosniff"

    @given(st.text(max_size=40), st.text(max_size=20))
    def test_never_lets_user_text_open_a_tag(self, message: str, shed: str) -> None:
        page = self.html(RouteError(message, shed=shed or None))
        same_shape = self.html(RouteError("m" if message else "", shed="s" if shed else None))
        assert page.count("<") == same_shape.count("<")
