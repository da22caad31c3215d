"""Debian's nginx in front of test servers, running the deployment's own site file.

`NginxProxy` takes deploy/nginx/lmvp.conf as an operator would install it and changes only the
lines its comments mark for change: the servers of the upstream (the test's server processes),
the listening addresses (free loopback ports) and the certificate (a self-signed one made here
for 127.0.0.1, which the test trusts through SSL_CERT_FILE and REQUESTS_CA_BUNDLE). Everything
else (buffering, body sizes, timeouts, forwarded headers) is the file as shipped, so a test
through this proxy tests the shipped site. Its access log names the server that answered each
request (`$upstream_addr`), which is how a test knows which worker served what: the servers
themselves say nothing about it.

nginx runs in the foreground (`daemon off`) under a prefix directory of the test's, as root or
not; `reload` swaps the upstream servers (SIGHUP, as `systemctl reload nginx` does), so a test
can take a server out of rotation while a request is in flight on it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support import _die_with_parent, free_ports

SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "lmvp.conf"
# What the access log says of each request: the server(s) that answered it last.
_LOG_FORMAT = "$request_method $uri $status $upstream_addr"


def find_nginx() -> str | None:
    """The nginx binary (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key; returns (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lmvp test proxy")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "proxy.pem", directory / "proxy.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _replace_once(text: str, old: str, new: str) -> str:
    # The shipped file must still hold the line: a test that silently kept it would test
    # something else than what the README tells operators to install.
    assert text.count(old) == 1, f"{SITE} no longer has exactly one {old!r}"
    return text.replace(old, new)


@dataclass
class Served:
    """One line of the access log."""

    method: str
    path: str
    status: int
    upstreams: list[str]  # "127.0.0.1:PORT" of each server tried, the one that answered last


class NginxProxy:
    """nginx with the deployment's site, on a free loopback port, in front of `upstreams`."""

    def __init__(self, directory: Path, upstreams: list[int], *, access_log: bool = True) -> None:
        binary = find_nginx()
        assert binary is not None, "nginx is not installed (apt-get install nginx)"
        self.binary = binary
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port = free_ports(2)
        self.cert, self.key = self_signed_certificate(self.dir)
        self.upstreams = list(upstreams)
        # Off for benches: a log line per request is a cost the deployment need not pay.
        self.log_requests = access_log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def site(self) -> str:
        """deploy/nginx/lmvp.conf with this proxy's servers, ports and certificate."""
        text = SITE.read_text()
        servers = "".join(f"server 127.0.0.1:{port};\n    " for port in self.upstreams)
        text = _replace_once(text, "server 127.0.0.1:8470;\n    ", servers)
        text = _replace_once(text, "listen 80;", f"listen 127.0.0.1:{self.http_port};")
        text = _replace_once(text, "listen [::]:80;", "")
        text = _replace_once(
            text, "listen 443 ssl http2;", f"listen 127.0.0.1:{self.port} ssl http2;"
        )
        text = _replace_once(text, "listen [::]:443 ssl http2;", "")
        text = _replace_once(text, "/etc/ssl/certs/lmvp.pem", str(self.cert))
        return _replace_once(text, "/etc/ssl/private/lmvp.key", str(self.key))

    def _write_config(self) -> Path:
        (self.dir / "lmvp.conf").write_text(self.site())
        temp = self.dir / "temp"
        temp.mkdir(exist_ok=True)
        # As root, nginx's workers would run as `nobody`, who may not enter the test's
        # temporary folders (where bodies of buffered requests go).
        user = "user root;\n" if os.geteuid() == 0 else ""
        log = f"{self.access_log} lmvp_test" if self.log_requests else "off"
        config = self.dir / "nginx.conf"
        config.write_text(
            f"{user}worker_processes 1;\n"
            f"pid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.dir / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    log_format lmvp_test '{_LOG_FORMAT}';\n"
            f"    access_log {log};\n"
            "    default_type application/octet-stream;\n"
            f"    client_body_temp_path {temp / 'body'};\n"
            f"    proxy_temp_path {temp / 'proxy'};\n"
            f"    fastcgi_temp_path {temp / 'fastcgi'};\n"
            f"    uwsgi_temp_path {temp / 'uwsgi'};\n"
            f"    scgi_temp_path {temp / 'scgi'};\n"
            f"    include {self.dir / 'lmvp.conf'};\n"
            "}\n"
        )
        return config

    def _command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            str(self.dir),
            "-c",
            str(self.dir / "nginx.conf"),
            "-e",
            str(self.dir / "error.log"),
            *extra,
        ]

    def start(self, timeout: float = 15.0) -> None:
        self._write_config()
        check = subprocess.run(self._command("-t"), capture_output=True, text=True)
        assert check.returncode == 0, f"nginx -t refused the site:\n{check.stderr}"
        self.proc = subprocess.Popen(
            self._command("-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr.log").open("wb"),
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited at start:\n{self._errors()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{self.url}/api/v1/health", verify=str(self.cert), timeout=2).ok:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer in {timeout}s:\n{self._errors()}")

    def reload(self, upstreams: list[int]) -> None:
        """Serve from `upstreams` from now on (SIGHUP: requests in flight finish where they
        are); returns once new requests go only to the new servers.

        On SIGHUP nginx starts workers with the new site and only some 100 ms later tells the
        old ones to stop taking connections: in between, a new connection may still reach an
        old worker and its old servers however many probes the new workers answered. So this
        waits until no worker from before holds a listening socket any more, then for a probe
        answered by the new servers."""
        assert self.proc is not None
        self.upstreams = list(upstreams)
        self._write_config()
        before = self._workers()
        lines = len(self.served())
        self.proc.send_signal(signal.SIGHUP)
        wanted = {f"127.0.0.1:{port}" for port in upstreams}
        deadline = time.monotonic() + 15
        while self._listening(before) or not (set(self._workers()) - set(before)):
            assert time.monotonic() < deadline, f"nginx did not reload:\n{self._errors()}"
            time.sleep(0.02)
        while True:
            assert time.monotonic() < deadline, f"nginx did not reload:\n{self._errors()}"
            requests.get(f"{self.url}/api/v1/health", verify=str(self.cert), timeout=5)
            probes = [s for s in self.served()[lines:] if s.path == "/api/v1/health"]
            if probes and set(probes[-1].upstreams) <= wanted:
                return
            time.sleep(0.05)

    def _workers(self) -> list[int]:
        """The worker processes of this nginx (children of its master), old and new."""
        assert self.proc is not None
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                # After the command's closing parenthesis: state, then the parent's pid.
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    found.append(int(stat.parent.name))
        return found

    def _listening(self, workers: list[int]) -> list[int]:
        """Those of `workers` that still hold one of nginx's listening sockets."""
        ports = {f"{port:04X}" for port in (self.port, self.http_port)}
        inodes = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            # local address as HEX_IP:HEX_PORT, state 0A = LISTEN, then the socket's inode.
            if fields[1].split(":")[1] in ports and fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
        holding = []
        for pid in workers:
            with contextlib.suppress(OSError):
                fds = Path(f"/proc/{pid}/fd")
                if any(os.readlink(fd) in inodes for fd in fds.iterdir()):
                    holding.append(pid)
        return holding

    def served(self) -> list[Served]:
        """Every request logged so far (nginx logs a request once it is answered)."""
        if not self.access_log.exists():
            return []
        found = []
        for line in self.access_log.read_text().splitlines():
            method, path, status, upstream = line.split(" ", 3)
            found.append(
                Served(method, path, int(status), [u for u in upstream.split(", ") if u != "-"])
            )
        return found

    def _errors(self) -> str:
        return "\n".join(
            p.read_text() for p in (self.dir / "error.log", self.dir / "stderr.log") if p.exists()
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: let answers in flight finish
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def trusting(cert: Path) -> Iterator[None]:
    """Clients of this process (httpx, http.client, requests) and the processes it starts
    trust `cert`, as a team's machines trust their server's certificate."""
    names = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ[name] = str(cert)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
