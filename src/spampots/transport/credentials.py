"""Credential files for NATS: checked at start, kept in memory for after the privilege drop.

A sensor started as root reads its config (and so these files) before it drops to
``[sensor] user``, typically ``nobody``, who cannot read a root-only ``0600`` seed,
``.creds`` or TLS key. The shipper connects again after every outage, and nats-py
would re-read the files on each connection. So every successful read is kept here
(by the path as written in the config), and a later connection reads the file again
when it can (a renewed ``.creds`` is picked up without a restart) or else uses the
copy read at start.

Formats:

* nkey seed file: one user seed, ``SU`` and 56 more base32 characters (as written by
  ``nsc`` or ``nk -gen user``); blank lines and ``#`` comments around it are ignored.
* ``.creds`` file: the user JWT and the user's nkey seed, each between two
  ``-----...-----`` lines (what ``nsc generate creds`` writes). The seed must belong to
  the JWT's user.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
from dataclasses import dataclass
from typing import Optional

_SEED_RE = re.compile(r"^SU[A-Z2-7]{56}$")
# A decorated block: a line of dashes, the value on its own line, a line of dashes
# (the same leniency as the Go client's jwt.ParseDecoratedJWT).
_BLOCK_RE = re.compile(r"-{3,}[^\n]*-{3,}\r?\n\s*([\w\-.=]+)\s*\r?\n\s*-{3,}[^\n]*-{3,}")
_JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

_kept: dict[str, str] = {}  # path as configured -> canonical content, from the last good read
_kept_tls: dict[tuple[str, str, str], ssl.SSLContext] = {}


class CredentialError(ValueError):
    """A credential file that is missing, unreadable or not of its kind."""


class Unreadable(CredentialError):
    """The file is missing or may not be read (by this user, from this directory)."""


def _read(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except FileNotFoundError:
        raise Unreadable(f"no such file {path!r}") from None
    except OSError as e:
        raise Unreadable(f"cannot read {path!r}: {e.strerror or e}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialError(f"{path!r} is not {what} (binary content)") from None


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum at the end of every nkey (nkeys.py does not check it)."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def _check_seed(seed: str, path: str, what: str) -> None:
    if not _SEED_RE.match(seed):
        hint = " (that is a public key, not the seed)" if seed.startswith("U") else ""
        raise CredentialError(f"{path!r} holds no {what}: want a user seed, 'SU' and 56 base32 "
                              f"characters{hint}")
    raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
    if int.from_bytes(raw[-2:], "little") != _crc16(raw[:-2]):
        raise CredentialError(f"{path!r}: the {what} is damaged (checksum mismatch; a typo?)")


def parse_nkey_seed(text: str, path: str = "seed file") -> str:
    """The user seed of an nkey seed file; CredentialError if it holds none."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise CredentialError(f"{path!r} holds no nkey seed: want one line 'SU...'")
    _check_seed(lines[0], path, "nkey seed")
    return lines[0]


def _b64json(part: str) -> dict:
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    out = json.loads(raw)
    if not isinstance(out, dict):
        raise ValueError("not a JSON object")
    return out


def _public_key(seed: str) -> Optional[str]:
    try:
        import nkeys
    except ImportError:
        return None
    kp = nkeys.from_seed(bytearray(seed.encode()))
    try:
        return kp.public_key.decode()
    finally:
        kp.wipe()


def parse_creds(text: str, path: str = "creds file") -> tuple[str, str]:
    """(user JWT, user seed) of a ``.creds`` file; CredentialError naming what is wrong."""
    blocks = _BLOCK_RE.findall(text)
    if not blocks or not _JWT_RE.match(blocks[0]):
        raise CredentialError(f"{path!r} is not a NATS .creds file: want a user JWT between "
                              "'-----BEGIN NATS USER JWT-----' lines, then the user's nkey seed "
                              "between '-----BEGIN USER NKEY SEED-----' lines")
    jwt = blocks[0]
    seeds = [b for b in blocks[1:] if b.startswith("S")]
    if not seeds:
        raise CredentialError(f"{path!r} has a JWT but no nkey seed block "
                              "('-----BEGIN USER NKEY SEED-----')")
    _check_seed(seeds[0], path, "user nkey seed")
    try:
        claims = _b64json(jwt.split(".")[1])
    except (ValueError, binascii.Error):
        raise CredentialError(f"{path!r}: the JWT's claims are not readable JSON") from None
    kind = (claims.get("nats") or {}).get("type") if isinstance(claims.get("nats"), dict) else None
    if kind not in (None, "user"):
        raise CredentialError(f"{path!r}: the JWT is an {kind!r} JWT, not a user's")
    pub = _public_key(seeds[0])
    if pub is not None and claims.get("sub") != pub:
        raise CredentialError(f"{path!r}: the nkey seed does not belong to the JWT's user "
                              f"({claims.get('sub')!r})")
    return jwt, seeds[0]


def creds_text(jwt: str, seed: str) -> str:
    """The canonical ``.creds`` layout, the one nats-py's parser reads."""
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n")


def _load(path: str, kind: str) -> str:
    if kind == "nkey_seed_file":
        value = parse_nkey_seed(_read(path, "an nkey seed file"), path)
    else:
        value = creds_text(*parse_creds(_read(path, "a .creds file"), path))
    _kept[path] = value
    return value


def check_file(key: str, path: str) -> Optional[str]:
    """For ``validate()``: None if ``path`` is a good file of kind ``key`` (and keep its
    content for later), else the problem worded for the user."""
    try:
        _load(path, key)
    except CredentialError as e:
        return str(e)
    return None


@dataclass
class Secret:
    value: str
    note: str = ""  # set when the file is unreadable now and this is the copy read at start


def load_secret(path: str, kind: str) -> Secret:
    """The file's content now, or the copy kept from start when it cannot be read any more
    (dropped privileges, a relative path after the sensor changed directory, a deleted file).
    CredentialError when it is unusable now and was never read before."""
    try:
        return Secret(_load(path, kind))
    except Unreadable as e:
        kept = _kept.get(path)
        if kept is None:
            raise
        return Secret(kept, f"{path} as read at start, unreadable now: {e}")


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """A client context verifying the broker with ``ca`` (system CAs when empty), presenting
    ``cert``/``key`` when given. Falls back to the context built at start when the files
    cannot be read now. OSError or ssl.SSLError when unusable."""
    try:
        ctx = ssl.create_default_context(cafile=ca or None)
        if cert:
            ctx.load_cert_chain(cert, key)
    except ssl.SSLError:  # bad content: never papered over (SSLError is an OSError too)
        raise
    except OSError:
        kept = _kept_tls.get((ca, cert, key))
        if kept is None:
            raise
        return kept
    _kept_tls[(ca, cert, key)] = ctx
    return ctx


def check_tls(ca: str, cert: str, key: str) -> list[str]:
    """For ``validate()``: problems loading the TLS files, each naming its key."""
    k = "transport.nats"
    try:
        tls_context(ca, "", "")
    except OSError as e:  # ssl.SSLError included
        return [f"{k}.tls_ca: cannot use {ca!r} as a CA bundle ({getattr(e, 'reason', None) or e.strerror or e})"]
    if not cert:
        return []
    try:
        tls_context(ca, cert, key)
    except ssl.SSLError as e:
        return [f"{k}.tls_cert, {k}.tls_key: not a PEM certificate and its matching unencrypted "
                f"private key ({e.reason or e})"]
    except OSError as e:
        return [f"{k}.tls_cert, {k}.tls_key: cannot read {e.filename or cert!r} ({e.strerror or e})"]
    return []
