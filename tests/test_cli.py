"""The ``splice`` command line, run as a real process: check, --version, serve's exits."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from upstreams import SpliceProcess, one_worker

from splice import __version__
from splice.build import build

RUN_TIMEOUT = 20

GOOD_CONFIG = """\
domains = ["srv.example.io", "example.test"]
default_port = 3000

[[listen]]
address = "127.0.0.1:8081"

[[listen]]
address = "[::1]:8443"
mode = "tls-passthrough"

[sheds.web-2]
address = "10.0.0.2"
ports = [{ port = 3000, label = "app" }, 9000]

[sheds.alpha]
address = "10.0.0.1"
default_port = 8080
"""

#: lines ``check`` prints for GOOD_CONFIG, in this order (other lines may come between)
GOOD_TABLE = [
    "config {path}: ok",
    "domains: srv.example.io, example.test   default port: 3000",
    "listen 127.0.0.1:8081 (http)",
    "listen ::1:8443 (tls-passthrough)",
    "resolvers: static   dial: direct",
    # a tls-passthrough listener: each shed's TLS default port too
    "  alpha.srv.example.io -> 10.0.0.1:8080   tls: 443   ports: any"
    "   e.g. 8080-alpha.srv.example.io",
    "  web-2.srv.example.io -> 10.0.0.2:3000   tls: 443   ports: 3000 (app), 9000"
    "   e.g. 3000-web-2.srv.example.io",
]

_LISTEN = '[[listen]]\naddress = "127.0.0.1:8081"\n'
#: (config text, what the error message must say after "splice: PATH: ")
BAD_CONFIGS = [
    (f'domains = ["x.test"]\ndefualt_port = 80\n{_LISTEN}', "defualt_port: unknown key"),
    (_LISTEN, "domains: give at least one base domain"),
    ('domains = "x.test"\n' + _LISTEN, "domains: must be a list"),
    ('domains = ["bad domain"]\n' + _LISTEN, "domains[0]: 'bad domain' is not a valid domain name"),
    ('domains = ["x.test"]\n', "listen: give at least one [[listen]] table"),
    ('domains = ["x.test"]\n[[listen]]\nmode = "http"\n', "listen[0].address: missing"),
    (
        'domains = ["x.test"]\n[[listen]]\naddress = "localhost:80"\n',
        "listen[0].address: 'localhost' is not an IP address",
    ),
    (
        'domains = ["x.test"]\n[[listen]]\naddress = "127.0.0.1:80"\nmode = "ftp"\n',
        "listen[0].mode: 'ftp' is not one of",
    ),
    (
        f'domains = ["x.test"]\nhead_timeout = 0\n{_LISTEN}',
        "head_timeout: 0 must be a positive number of seconds",
    ),
    (
        f'domains = ["x.test"]\nmax_head = 10\n{_LISTEN}',
        "max_head: 10 must be an integer from 1024",
    ),
    (
        f'domains = ["x.test"]\n{_LISTEN}[sheds.Bad_Name]\naddress = "10.0.0.1"\n',
        "sheds.Bad_Name: not a valid shed name",
    ),
    (
        f'domains = ["x.test"]\n{_LISTEN}[sheds.a]\naddress = "10.0.0.1"\nports = [70000]\n',
        "sheds.a.ports[0]: 70000 is not a port number",
    ),
    (
        f'domains = ["x.test"]\n{_LISTEN}[sheds.a]\naddress = "10.0.0.1"\nportz = [1]\n',
        "sheds.a.portz: unknown key",
    ),
    (f'domains = ["x.test"]\n{_LISTEN}[sheds.a]\naddress = "a.b"\n', "sheds.a.address: 'a.b'"),
    ('domains = ["x.test"\n', "{path} is not valid TOML: Unclosed array"),
]


def splice(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m splice ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "splice", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        cwd=cwd,
    )


def test_a_config_file_that_is_not_utf_8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "splice.toml"
    path.write_bytes(b"\xff\xfe" + GOOD_CONFIG.encode())
    for command in ("check", "serve"):
        out = splice(command, "-c", str(path))
        assert out.returncode == 1, (command, out.stderr)
        assert f"{path} is not valid TOML" in out.stderr and "Traceback" not in out.stderr


def test_check_prints_ok_and_the_route_table(tmp_path: Path) -> None:
    path = tmp_path / "splice.toml"
    path.write_text(GOOD_CONFIG)
    out = splice("check", "-c", str(path))
    assert (out.returncode, out.stderr) == (0, "")
    printed = out.stdout.splitlines()
    assert printed[0] == GOOD_TABLE[0].format(path=path)
    wanted = [line for line in printed if line in GOOD_TABLE[1:]]
    assert wanted == GOOD_TABLE[1:], out.stdout


def test_check_shows_one_worker_per_core_this_process_may_use(tmp_path: Path) -> None:
    path = tmp_path / "splice.toml"
    path.write_text(GOOD_CONFIG)  # no workers key: the default
    cores = sorted(os.sched_getaffinity(0))
    line = "workers: {}   log format: text   admin: none"
    out = splice("check", "-c", str(path))
    assert line.format(len(cores)) in out.stdout.splitlines(), out.stdout
    pinned = subprocess.run(  # taskset: the affinity systemd's CPUAffinity= also sets
        ["taskset", "-c", str(cores[0]), sys.executable, "-m", "splice", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True,
    )  # fmt: skip
    assert line.format(1) in pinned.stdout.splitlines(), pinned.stdout


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_check_rejects_a_bad_config_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = splice("check", "-c", str(path))
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith(f"splice: {path}: {message.format(path=path)}"), out.stderr
    assert out.stderr.count("\n") == 1, "one line, no traceback"


def test_check_of_a_missing_file_says_it_cannot_read_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    out = splice("check", "-c", str(path))
    assert out.returncode == 1
    assert out.stderr == f"splice: {path}: cannot read {path}: No such file or directory\n"


def test_serve_with_a_bad_config_exits_1_with_the_same_message(tmp_path: Path) -> None:
    text, message = BAD_CONFIGS[0]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = splice("serve", "-c", str(path))
    assert out.returncode == 1
    assert out.stderr.startswith(f"splice: {path}: {message}")
    assert "listening" not in out.stderr


def test_serve_on_a_port_already_in_use_exits_1_without_a_traceback(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        path = tmp_path / "splice.toml"
        path.write_text(
            one_worker(f'domains = ["x.test"]\n[[listen]]\naddress = "127.0.0.1:{port}"\n')
        )
        out = splice("serve", "-c", str(path))
    assert out.returncode == 1
    assert "Address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_stops_cleanly_with_exit_0_on_sigterm(tmp_path: Path) -> None:
    cfg = {"domains": ["x.test"], "listen": [{"address": "127.0.0.1:0"}]}
    proc = SpliceProcess(cfg, tmp_path, drain=0.3)
    with proc.client() as c:  # a request in flight is not needed; a live connection is
        c.send(b"GET / HTTP/1.1\r\nHost: nosuch.x.test\r\n")
        time.sleep(0.1)  # the signal handlers go in just after the "listening" line
        assert proc.stop() == 0, proc.stderr
    assert "SIGTERM: stopping" in proc.stderr
    assert not proc.problems(), proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "splice", "--version"],
        [str(Path(sys.executable).parent / "splice"), "--version"],
    ],
    ids=["python -m splice", "console script"],
)
def test_version_prints_the_package_version(command: list[str]) -> None:
    out = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    # the child imports what this process does (make test: mypyc, then interpreted)
    want = f"splice {__version__} ({build()})\n"
    assert (out.returncode, out.stdout, out.stderr) == (0, want, "")


def test_python_dash_m_splice_without_a_command_prints_usage_and_exits_2() -> None:
    out = splice()
    assert out.returncode == 2
    assert out.stderr.startswith("usage: splice ")
    assert "serve" in out.stderr and "check" in out.stderr and "demo" in out.stderr


def test_help_lists_the_three_commands() -> None:
    out = splice("--help")
    assert out.returncode == 0
    for command in ("serve", "check", "demo"):
        assert command in out.stdout


class TestPasswd:
    def test_passwd_prints_a_hash_that_verifies_the_password_it_read(self) -> None:
        from splice.egress.passwords import verify_password

        out = subprocess.run(
            [sys.executable, "-m", "splice", "passwd", "alice"],
            input="s3cret\n", capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert out.startswith('alice = "scrypt$')
        encoded = out.split('"')[1]
        assert verify_password("s3cret", encoded) and not verify_password("other", encoded)

    def test_passwd_refuses_an_empty_password(self) -> None:
        r = subprocess.run(
            [sys.executable, "-m", "splice", "passwd", "alice"],
            input="\n", capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert r.returncode == 1 and "empty" in r.stderr


def test_the_route_table_shows_tls_ports_only_with_a_tls_listener(tmp_path: Path) -> None:
    path = tmp_path / "splice.toml"
    path.write_text(GOOD_CONFIG.replace('mode = "tls-passthrough"', 'mode = "http"'))
    out = splice("check", "-c", str(path))
    assert out.returncode == 0, out.stderr
    assert "  alpha.srv.example.io -> 10.0.0.1:8080   ports: any" in out.stdout
    assert "tls:" not in out.stdout
    path.write_text(
        GOOD_CONFIG.replace("default_port = 8080", "default_port = 8080\ntls_port = 8443")
    )
    out = splice("check", "-c", str(path))
    assert "  alpha.srv.example.io -> 10.0.0.1:8080   tls: 8443   ports: any" in out.stdout


def test_routes_against_a_listener_that_does_not_speak_http_is_one_clear_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def banner() -> None:  # an SSH server, say: a greeting, then it hangs up
            srv.settimeout(RUN_TIMEOUT)
            with contextlib.suppress(OSError):
                conn, _ = srv.accept()
                with conn:
                    conn.recv(1000)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        t = threading.Thread(target=banner, daemon=True)
        t.start()
        r = splice("routes", "--admin", f"127.0.0.1:{port}")
        t.join(RUN_TIMEOUT)
    assert r.returncode == 1
    assert r.stderr.startswith("splice: ") and r.stderr.count("\n") == 1, r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and "HTTP" in r.stderr


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_demo_with_a_port_out_of_range_is_one_clear_line(port: str) -> None:
    r = splice("demo", "--port", port)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.startswith(f"splice: demo --port {port}: ") and r.stderr.count("\n") == 1
