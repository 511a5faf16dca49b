"""A real nats-server (Debian's package) with JetStream on a loopback port, for the transport tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

NATS_SERVER = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """``nats-server -js -a 127.0.0.1 -p PORT -sd DIR`` that can be killed and started again
    on the same port and store directory."""

    def __init__(self, store_dir: Path, *, user: str = "", password: str = "",
                 tls: Optional[tuple[Path, Path]] = None) -> None:
        self.store_dir = store_dir
        self.port = free_port()
        self.user, self.password = user, password
        self.tls = tls  # (certificate, key) PEM files: clients must use tls://
        self.proc: Optional[subprocess.Popen] = None
        self.log = store_dir.parent / f"nats-{self.port}.log"

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        assert NATS_SERVER is not None
        cmd = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        if self.user:
            cmd += ["--user", self.user, "--pass", self.password]
        if self.tls:
            cmd += ["--tls", "--tlscert", str(self.tls[0]), "--tlskey", str(self.tls[1])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("nats-server did not start")

    def kill(self) -> None:
        """SIGKILL: the broker dies mid-stream, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _make(tmp_path_factory, **kw) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    base = tmp_path_factory.mktemp("nats")
    srv = NatsServer(base / "store", **kw)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def nats_server(tmp_path_factory) -> Iterator[NatsServer]:
    """A fresh JetStream server per test."""
    yield from _make(tmp_path_factory)


def self_signed(dir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (it is its own CA) and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spampots test broker")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    crt, pem = dir / "broker.crt", dir / "broker.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


@pytest.fixture
def nats_server_tls(tmp_path_factory) -> Iterator[NatsServer]:
    """A JetStream server that speaks TLS only, with a self-signed certificate (``.tls[0]``)."""
    base = tmp_path_factory.mktemp("nats-tls")
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    srv = NatsServer(base / "store", tls=self_signed(base))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def nats_server_auth(tmp_path_factory) -> Iterator[NatsServer]:
    """A JetStream server that wants user ``sensor`` with password ``right``."""
    yield from _make(tmp_path_factory, user="sensor", password="right")
