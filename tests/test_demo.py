"""``splice demo`` driven the way its banner says: with the real ``curl`` binary.

The demo binds its sheds on fixed loopback ports (127.0.0.2:8080 and :9000,
127.0.0.3:8080 and :3000) and splice on ``--port``. One demo process serves the
whole module. curl resolves ``*.localhost`` to loopback by itself.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from upstreams import RawClient, WsClient, random_body

DOMAIN = "demo.localhost"
#: how long the demo may take to print its banner
START_TIMEOUT = 10.0
#: attempts to start the demo when a port it needs is briefly taken
START_ATTEMPTS = 3
CURL_TIMEOUT = 5

#: every curl example the banner prints -> (status, X-Shed-Error, shed, port, target)
EXAMPLES = {
    "curl http://alpha.{d}:{p}/": (200, None, "alpha", 8080, "/"),
    "curl http://beta-3000.{d}:{p}/": (200, None, "beta", 3000, "/"),
    "curl http://3000-beta.{d}:{p}/hello": (200, None, "beta", 3000, "/hello"),
    "curl http://beta.{d}:{p}/port/3000/hello": (200, None, "beta", 3000, "/hello"),
    "curl -d 'some body' http://alpha.{d}:{p}/echo": (200, None, "alpha", 8080, "/echo"),
    "curl -i http://alpha-7777.{d}:{p}/": (403, "PORT_NOT_EXPOSED", "alpha", 7777, None),
    "curl -i http://nosuch.{d}:{p}/": (404, "SHED_NOT_FOUND", "nosuch", None, None),
    "curl -i -H 'Accept: application/json' http://nosuch.{d}:{p}/": (
        404,
        "SHED_NOT_FOUND",
        "nosuch",
        None,
        None,
    ),
}


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    port: int
    stdout: list[str] = field(default_factory=list)

    def url(self, label: str, path: str = "/") -> str:
        return f"http://{label}.{DOMAIN}:{self.port}{path}"


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]
    body: bytes
    stderr: str


def run_curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run curl with ``args`` (never through a proxy); it must exit 0."""
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--max-time", str(CURL_TIMEOUT), *args],
        capture_output=True,
        timeout=CURL_TIMEOUT + 5,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    return out


def curl(*args: str) -> CurlResult:
    """Run ``curl -i args``; the last response it printed."""
    out = run_curl("-i", *args)
    # the final response: after any 100 Continue
    heads = [m.start() for m in re.finditer(rb"HTTP/1\.1 [2-5]\d\d", out.stdout)]
    head, _, body = out.stdout[heads[-1] :].partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return CurlResult(int(lines[0].split()[1]), headers, body, out.stderr.decode())


def echo_of(result: CurlResult) -> dict[str, object]:
    """The demo app's answer: a greeting line, then the request as JSON."""
    greeting, _, rest = result.body.decode().partition("\n")
    echo: dict[str, object] = json.loads(rest)
    assert greeting == f"Hello from shed {echo['shed']}, port {echo['port']}."
    return echo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_demo() -> Demo:
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "splice", "demo", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        demo = Demo(proc, port)
        assert proc.stdout is not None
        reader = threading.Thread(
            target=lambda d=demo, f=proc.stdout: d.stdout.extend(line.rstrip("\n") for line in f),
            daemon=True,
        )
        reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if "Ctrl-C stops." in demo.stdout:
                return demo
            time.sleep(0.02)
        err = _stop(demo)
        if "already in use" not in err:
            raise AssertionError(f"splice demo did not start:\n{err}")
        time.sleep(1.0)  # a port the demo needs is taken; try again
    raise AssertionError("splice demo: its ports stayed taken")


def _stop(demo: Demo) -> str:
    """SIGTERM the demo (SIGKILL if it hangs); its stderr."""
    if demo.proc.poll() is None:
        demo.proc.send_signal(signal.SIGTERM)
    try:
        _, err = demo.proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        demo.proc.kill()
        _, err = demo.proc.communicate(timeout=5)
    return err


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    assert shutil.which("curl"), "curl is needed: apt-get install -y curl"
    d = _start_demo()
    yield d
    err = _stop(d)
    assert d.proc.returncode == 0, err
    assert "Traceback" not in err, err


def test_the_demo_banner_lists_every_curl_example_with_its_port(demo: Demo) -> None:
    assert demo.stdout[0] == f"splice demo: listening on 127.0.0.1:{demo.port} for *.{DOMAIN}"
    printed = [line.split("#")[0].strip() for line in demo.stdout if line.startswith("  curl ")]
    assert printed == [e.format(d=DOMAIN, p=demo.port) for e in EXAMPLES]
    assert f"WebSocket echo: ws://alpha-9000.{DOMAIN}:{demo.port}/" in demo.stdout


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_every_curl_example_in_the_demo_banner_works(demo: Demo, example: str) -> None:
    status, code, shed, port, target = EXAMPLES[example]
    args = shlex.split(example.format(d=DOMAIN, p=demo.port))[1:]
    result = curl(*[a for a in args if a != "-i"])
    assert result.status == status
    assert result.headers.get("x-shed-error") == code
    if code is None:
        echo = echo_of(result)
        assert (echo["shed"], echo["port"], echo["target"]) == (shed, port, target)
        return
    assert result.headers["connection"] == "close"
    if result.headers["content-type"] == "application/json":
        error = json.loads(result.body)["error"]
        assert (error["code"], error["shed"], error["port"]) == (code, shed, port)
    elif code == "PORT_NOT_EXPOSED":
        page = result.body.decode()
        for label in ("8080 web", "9000 ws-echo"):
            assert label in page
        assert f'href="http://9000-alpha.{DOMAIN}:{demo.port}/"' in page


def test_curl_posts_a_body_and_the_vm_sees_the_request_as_sent(demo: Demo) -> None:
    result = curl("-d", "some body", "-H", "X-Test: yes", demo.url("alpha", "/echo?x=1"))
    echo = echo_of(result)
    assert (echo["method"], echo["target"], echo["body_bytes"]) == ("POST", "/echo?x=1", 9)
    pairs = echo["headers"]  # [[name, value], ...]
    assert isinstance(pairs, list)
    headers = dict(pairs)
    assert headers["Host"] == f"alpha.{DOMAIN}:{demo.port}"
    assert headers["X-Test"] == "yes"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_curl_uploads_a_large_body_with_expect_100_continue(
    demo: Demo, tmp_path: Path, chunked: bool
) -> None:
    size = 3 * 1024 * 1024
    upload = tmp_path / "upload.bin"
    upload.write_bytes(random_body(5, size))
    extra = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    # curl asks "Expect: 100-continue" for bodies over 1 MiB (the demo app sends no
    # 100, so curl sends the body after --expect100-timeout)
    result = curl(
        "-v",
        "--expect100-timeout",
        "0.2",
        "--data-binary",
        f"@{upload}",
        *extra,
        demo.url("beta-3000", "/up"),
    )
    assert "Expect: 100-continue" in result.stderr
    echo = echo_of(result)
    assert (echo["shed"], echo["port"], echo["body_bytes"]) == ("beta", 3000, size)


def test_curl_reuses_one_connection_for_two_requests_to_two_ports_of_a_shed(demo: Demo) -> None:
    # same host name, so curl keeps the connection; splice routes each request on its own
    out = run_curl("-v", demo.url("beta", "/port/3000/one"), demo.url("beta", "/two"))
    assert "Re-using existing connection" in out.stderr.decode()
    assert re.findall(rb"Hello from shed beta, port (\d+)\.", out.stdout) == [b"3000", b"8080"]
    assert re.findall(rb'"target": "([^"]*)"', out.stdout) == [b"/one", b"/two"]


def test_the_demo_websocket_echo_answers_through_splice(demo: Demo) -> None:
    with RawClient(demo.port) as c:
        ws = WsClient(c, f"alpha-9000.{DOMAIN}:{demo.port}", "/")
        messages: list[str | bytes] = ["hello demo", b"\x00\xff" * 1000]
        for message in messages:
            assert ws.echo(message) == message
        ws.close()
