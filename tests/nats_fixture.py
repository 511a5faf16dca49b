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
                 tls: Optional[tuple[Path, Path]] = None, tls_verify_ca: Optional[Path] = None,
                 config: str = "") -> None:
        self.store_dir = store_dir
        self.port = free_port()
        self.user, self.password = user, password
        self.tls = tls  # (certificate, key) PEM files: clients must use tls://
        self.tls_verify_ca = tls_verify_ca  # mutual TLS: clients need a certificate signed by this CA
        self.config = config  # nats-server configuration text (e.g. authorization, operator)
        self.secrets: dict[str, str] = {}  # what a fixture made for the clients (seeds, creds, files)
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
        if self.tls_verify_ca:
            cmd += ["--tlsverify", "--tlscacert", str(self.tls_verify_ca)]
        if self.config:
            conf = self.store_dir.parent / f"nats-{self.port}.conf"
            conf.write_text(self.config)
            cmd += ["-c", str(conf)]  # the flags above win over the file
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


def _make(tmp_path_factory, secrets: Optional[dict[str, str]] = None, **kw) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    base = tmp_path_factory.mktemp("nats")
    srv = NatsServer(base / "store", **kw)
    srv.secrets.update(secrets or {})
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
    yield from _make(tmp_path_factory, tls=self_signed(tmp_path_factory.mktemp("nats-tls")))


@pytest.fixture
def nats_server_auth(tmp_path_factory) -> Iterator[NatsServer]:
    """A JetStream server that wants user ``sensor`` with password ``right``."""
    yield from _make(tmp_path_factory, user="sensor", password="right")


# -- nkeys and decentralised (JWT) authentication ----------------------------------------------------


def new_nkey(kind: str = "user"):
    """A fresh nkeys.KeyPair of kind user, account or operator."""
    import os

    import nkeys

    prefix = {"user": nkeys.PREFIX_BYTE_USER, "account": nkeys.PREFIX_BYTE_ACCOUNT,
              "operator": nkeys.PREFIX_BYTE_OPERATOR}[kind]
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def user_nkey() -> tuple[str, str]:
    """(seed "SU...", public key "U...") of a new user nkey."""
    kp = new_nkey("user")
    return kp.seed.decode(), kp.public_key.decode()


def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def nats_jwt(issuer, subject: str, name: str, nats: dict) -> str:
    """A NATS v2 JWT (what `nsc` writes): JSON claims signed by ``issuer`` with ed25519-nkey."""
    import base64
    import hashlib
    import json

    claims = {"jti": "", "iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
              "sub": subject, "nats": {**nats, "version": 2}}
    digest = hashlib.sha256(json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signed = f"{_b64(json.dumps({'typ': 'JWT', 'alg': 'ed25519-nkey'}).encode())}." \
             f"{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
              "conn": -1, "leaf": -1}


class Operator:
    """An operator with a system account and one JetStream-enabled account ``spampots``,
    all made here with the ``nkeys`` package (no nsc needed); the server trusts them through
    ``operator`` + ``resolver: MEMORY`` with the account JWTs preloaded."""

    def __init__(self) -> None:
        self.op, self.sys, self.acc = new_nkey("operator"), new_nkey("account"), new_nkey("account")
        self.op_jwt = nats_jwt(self.op, self.op.public_key.decode(), "spampots-test", {"type": "operator"})
        self.sys_jwt = nats_jwt(self.op, self.sys.public_key.decode(), "SYS",
                                {"type": "account", "limits": _UNLIMITED})
        js = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
        self.acc_jwt = nats_jwt(self.op, self.acc.public_key.decode(), "spampots",
                                {"type": "account", "limits": {**_UNLIMITED, **js}})

    def server_config(self) -> str:
        return (f'operator: "{self.op_jwt}"\nsystem_account: {self.sys.public_key.decode()}\n'
                f'resolver: MEMORY\nresolver_preload: {{\n'
                f'  {self.acc.public_key.decode()}: "{self.acc_jwt}"\n'
                f'  {self.sys.public_key.decode()}: "{self.sys_jwt}"\n}}\n')

    def user_creds(self, name: str, *, pub: Optional[dict] = None, sub: Optional[dict] = None) -> str:
        """A .creds file's text for a new user of the spampots account (``pub``, ``sub``: its
        permissions, e.g. ``{"allow": ["spampots.edge1.>"]}``; default: anything)."""
        user = new_nkey("user")
        jwt = nats_jwt(self.acc, user.public_key.decode(), name,
                       {"type": "user", "pub": pub or {}, "sub": sub or {}, "subs": -1, "data": -1, "payload": -1})
        return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
                "************************* IMPORTANT *************************\n"
                "NKEY Seed printed below can be used to sign and prove identity.\n\n"
                f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n\n"
                "*************************************************************\n")


@pytest.fixture
def nats_server_nkey(tmp_path_factory) -> Iterator[NatsServer]:
    """A JetStream server whose one user is an nkey; its seed is ``.secrets["seed"]``."""
    seed, pub = user_nkey()
    yield from _make(tmp_path_factory, secrets={"seed": seed},
                     config=f"authorization {{\n  users = [\n    {{ nkey: {pub} }}\n  ]\n}}\n")


@pytest.fixture
def nats_server_jwt(tmp_path_factory) -> Iterator[NatsServer]:
    """A JetStream server in operator mode (decentralised JWT auth): ``.secrets["creds"]`` is the
    .creds text of a user of its account, ``.operator`` the ``Operator`` (more users);
    ``Operator()`` anew makes users of an account this server does not know."""
    op = Operator()
    for srv in _make(tmp_path_factory, secrets={"creds": op.user_creds("edge1")}, config=op.server_config()):
        srv.operator = op  # type: ignore[attr-defined]
        yield srv


# -- mutual TLS -----------------------------------------------------------------------------------


def _pem_pair(dir: Path, stem: str, cert, key) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    crt, pem = dir / f"{stem}.crt", dir / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def _issue(cn: str, issuer=None, *, ca: bool = False, server: bool = False, client: bool = False):
    """(certificate, key); ``issuer`` = (certificate, key) of the CA, or None for self-signed."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_cert.subject if issuer_cert else name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), False)
    return b.sign(issuer_key, hashes.SHA256()), key


def mtls_files(dir: Path) -> dict[str, Path]:
    """A test CA, the broker's certificate for 127.0.0.1 and a client certificate it signed,
    and a client certificate of another CA: ``ca``, ``server_crt``/``server_key``,
    ``client_crt``/``client_key``, ``stranger_crt``/``stranger_key``."""
    ca = _issue("spampots test CA", ca=True)
    out = {"ca": _pem_pair(dir, "ca", *ca)[0]}
    out["server_crt"], out["server_key"] = _pem_pair(dir, "broker", *_issue("broker", ca, server=True))
    out["client_crt"], out["client_key"] = _pem_pair(dir, "edge1", *_issue("edge1", ca, client=True))
    other = _issue("another CA", ca=True)
    out["stranger_crt"], out["stranger_key"] = _pem_pair(dir, "stranger", *_issue("edge1", other, client=True))
    return out


@pytest.fixture
def nats_server_mtls(tmp_path_factory) -> Iterator[NatsServer]:
    """A JetStream server on TLS that wants a client certificate of our test CA (``verify``);
    the files are in ``.secrets`` (see ``mtls_files``)."""
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    files = mtls_files(tmp_path_factory.mktemp("pki"))
    yield from _make(tmp_path_factory, secrets={k: str(v) for k, v in files.items()},
                     tls=(files["server_crt"], files["server_key"]), tls_verify_ca=files["ca"])
