"""Credentials beyond user/password against a real nats-server on loopback: nkey seed files,
.creds files (decentralised JWT auth, keys and JWTs made here with `nkeys`), mutual TLS.

For each kind: the right credentials ship everything to a collector; wrong ones are refused
with one clear ERROR line while the sensor keeps capturing locally, and everything is shipped
once they are fixed. The files are read at start and kept, so a sensor that dropped root
still authenticates when it reconnects (checked with a real sensor process as well).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

from nats_fixture import (  # noqa: F401 (fixtures)
    Operator, nats_server_jwt, nats_server_mtls, nats_server_nkey, user_nkey,
)
from spampots.store.recorder import Recorder
from spampots.transport import credentials
from spampots.transport.collector import Collector
from spampots.transport.config import NatsSection, load_section
from spampots.transport.network import StreamSettings, init_network
from spampots.transport.shipper import Shipper
from test_transport import assert_same, capture, cfg_for, refused_then_fixed, total, wait_for

pytest.importorskip("nats")
pytest.importorskip("nkeys")


def write(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


# -- parsing and validation (no broker) ------------------------------------------------------------


def test_nkey_seed_file_is_checked_at_start_with_the_key_named(tmp_path):
    seed, pub = user_nkey()
    good = write(tmp_path / "edge1.nk", f"# edge1's nkey\n{seed}\n")
    assert NatsSection(nkey_seed_file=good).validate() == []
    assert credentials.parse_nkey_seed(f"\n  {seed}  \n") == seed
    cases = {
        "public.nk": (pub, "public key, not the seed"),
        "two.nk": (f"{seed}\n{seed}\n", "want one line"),
        "empty.nk": ("", "want one line"),
        # a typo in the middle (the last base32 digit carries 2 padding bits: changing it may
        # leave the decoded bytes, and their checksum, intact)
        "typo.nk": (seed[:20] + ("A" if seed[20] != "A" else "B") + seed[21:], "damaged"),
        "account.nk": (Operator().acc.seed.decode(), "want a user seed"),
    }
    for name, (text, words) in cases.items():
        errs = NatsSection(nkey_seed_file=write(tmp_path / name, text)).validate()
        assert len(errs) == 1 and errs[0].startswith("transport.nats.nkey_seed_file: "), errs
        assert words in errs[0] and name in errs[0], errs
    (tmp_path / "binary.nk").write_bytes(b"\xff\xfe" + os.urandom(40))
    assert "binary" in NatsSection(nkey_seed_file=str(tmp_path / "binary.nk")).validate()[0]
    assert "no such file" in NatsSection(nkey_seed_file=str(tmp_path / "nope.nk")).validate()[0]
    with pytest.raises(ValueError, match=r"sensor.toml: transport.nats.nkey_seed_file: .*public key"):
        load_section({"transport": {"nats": {"nkey_seed_file": str(tmp_path / "public.nk")}}}, "sensor.toml")


def test_creds_file_is_parsed_leniently_and_malformed_ones_are_named(tmp_path):
    op = Operator()
    text = op.user_creds("edge1")
    good = write(tmp_path / "edge1.creds", text)
    assert NatsSection(creds_file=good).validate() == []
    jwt, seed = credentials.parse_creds(text)
    assert jwt.count(".") == 2 and seed.startswith("SU")
    # other decorations (some tools write "USER PRIVATE KEY") and CRLF line ends are fine
    odd = text.replace("USER NKEY SEED", "USER PRIVATE KEY").replace("\n", "\r\n")
    assert credentials.parse_creds(odd) == (jwt, seed)
    # what nats-py is handed is the canonical layout, whatever the file looked like
    assert credentials.parse_creds(credentials.creds_text(jwt, seed)) == (jwt, seed)
    other_seed = credentials.parse_creds(op.user_creds("edge2"))[1]
    cases = {
        "garbage.creds": ("hello\n", "not a NATS .creds file"),
        "seed-only.creds": (f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n",
                            "not a NATS .creds file"),
        "jwt-only.creds": (text.split("*")[0], "no nkey seed block"),
        "mismatch.creds": (text.replace(seed, other_seed), "does not belong to the JWT's user"),
        "account.creds": (credentials.creds_text(op.acc_jwt, seed), "not a user's"),
        "badclaims.creds": (credentials.creds_text("e30.bm9wZQ.c2ln", seed), "claims are not readable"),
    }
    for name, (body, words) in cases.items():
        errs = NatsSection(creds_file=write(tmp_path / name, body)).validate()
        assert len(errs) == 1 and errs[0].startswith("transport.nats.creds_file: "), errs
        assert words in errs[0] and name in errs[0], errs


def test_files_read_at_start_are_used_when_unreadable_later(tmp_path):
    seed, _ = user_nkey()
    path = tmp_path / "edge1.nk"
    cfg = NatsSection(nkey_seed_file=write(path, seed + "\n"))
    assert cfg.validate() == []  # as root, before the sensor drops privileges
    path.unlink()  # what an unreadable file looks like to `nobody`
    secret = credentials.load_secret(str(path), "nkey_seed_file")
    assert secret.value == seed and "as read at start" in secret.note
    # a renewed file is read again when it can be
    seed2, _ = user_nkey()
    write(path, seed2)
    assert credentials.load_secret(str(path), "nkey_seed_file") == credentials.Secret(seed2)
    # but a file that was never readable is an error, and a malformed renewal is not papered over
    with pytest.raises(credentials.CredentialError, match="no such file"):
        credentials.load_secret(str(tmp_path / "never.nk"), "nkey_seed_file")
    write(path, "SUxyz")
    with pytest.raises(credentials.CredentialError, match="holds no nkey seed"):
        credentials.load_secret(str(path), "nkey_seed_file")


def test_tls_files_are_checked_at_start(tmp_path):
    from nats_fixture import mtls_files

    f = mtls_files(tmp_path)
    ok = NatsSection(tls_ca=str(f["ca"]), tls_cert=str(f["client_crt"]), tls_key=str(f["client_key"]))
    assert ok.validate() == []
    swapped = NatsSection(tls_ca=str(f["ca"]), tls_cert=str(f["client_crt"]), tls_key=str(f["stranger_key"]))
    errs = swapped.validate()
    assert len(errs) == 1 and errs[0].startswith("transport.nats.tls_cert, transport.nats.tls_key: "), errs
    assert "matching unencrypted private key" in errs[0], errs
    not_a_ca = write(tmp_path / "junk.pem", "not a certificate\n")
    assert NatsSection(tls_ca=not_a_ca).validate()[0].startswith("transport.nats.tls_ca: cannot use")
    # read at start, used from memory when the key cannot be read any more (dropped root)
    ctx = credentials.tls_context(str(f["ca"]), str(f["client_crt"]), str(f["client_key"]))
    f["client_key"].rename(tmp_path / "moved.key")
    assert credentials.tls_context(str(f["ca"]), str(f["client_crt"]), str(f["client_key"])) is ctx


# -- against a real broker -------------------------------------------------------------------------


def ship_and_collect(tmp_path: Path, cfg: NatsSection, admin: Optional[NatsSection] = None,
                     big: bool = False) -> None:
    """Ship a sensor's store with ``cfg``; init and collect with ``admin`` (default: ``cfg``)."""
    from test_transport import make_sensor

    d = make_sensor(tmp_path, "edge1", 300, big=big)
    central = tmp_path / "central"
    admin = admin or cfg

    async def main() -> None:
        await init_network(admin, StreamSettings())
        stop = asyncio.Event()
        sh, col = Shipper(d, "edge1", cfg), Collector(central, admin)
        tasks = [asyncio.create_task(sh.run(stop)), asyncio.create_task(col.run(stop))]
        await wait_for(lambda: col.stats.events >= total([d]) and sh.stats.caught_up, 20, "shipping")
        stop.set()
        await asyncio.gather(*tasks)
        assert sh.stats.failures == 0 and col.stats.failures == 0

    asyncio.run(main())
    assert_same(central, [d])


def test_nkey_seed_file_ships(tmp_path, nats_server_nkey):
    seed = write(tmp_path / "edge1.nk", nats_server_nkey.secrets["seed"] + "\n")
    ship_and_collect(tmp_path, cfg_for(nats_server_nkey.url, nkey_seed_file=seed))


def test_wrong_nkey_refused_clearly_capture_continues_then_ships(tmp_path, nats_server_nkey, caplog):
    good = cfg_for(nats_server_nkey.url,
                   nkey_seed_file=write(tmp_path / "right.nk", nats_server_nkey.secrets["seed"]))
    bad = cfg_for(nats_server_nkey.url, nkey_seed_file=write(tmp_path / "wrong.nk", user_nkey()[0]))
    refused = refused_then_fixed(tmp_path, good, bad, caplog, "NATS refused the credentials of sensor edge1")
    assert "Authorization Violation" in refused[0]


def test_creds_file_ships(tmp_path, nats_server_jwt):
    creds = write(tmp_path / "edge1.creds", nats_server_jwt.secrets["creds"])
    ship_and_collect(tmp_path, cfg_for(nats_server_jwt.url, creds_file=creds))


def test_creds_with_just_the_documented_sensor_permissions_ship(tmp_path, nats_server_jwt):
    """docs/network.md's least privilege for a sensor, big bodies (object store) included."""
    admin = cfg_for(nats_server_jwt.url, creds_file=write(tmp_path / "admin.creds", nats_server_jwt.secrets["creds"]))
    narrow = nats_server_jwt.operator.user_creds(
        "edge1", pub={"allow": ["spampots.edge1.>", "$JS.API.>", "$O.SPAMPOTS_BODIES.>"]},
        sub={"allow": ["_INBOX.>"]})
    cfg = cfg_for(nats_server_jwt.url, creds_file=write(tmp_path / "edge1.creds", narrow))
    ship_and_collect(tmp_path, cfg, admin, big=True)


def test_creds_of_an_unknown_account_refused_clearly_then_ships(tmp_path, nats_server_jwt, caplog):
    good = cfg_for(nats_server_jwt.url, creds_file=write(tmp_path / "right.creds", nats_server_jwt.secrets["creds"]))
    stranger = Operator().user_creds("edge1")  # signed by an account this server does not trust
    bad = cfg_for(nats_server_jwt.url, creds_file=write(tmp_path / "wrong.creds", stranger))
    refused = refused_then_fixed(tmp_path, good, bad, caplog, "NATS refused the credentials of sensor edge1")
    assert "Authorization Violation" in refused[0]


def test_creds_without_publish_permission_is_reported_as_such(tmp_path, nats_server_jwt, caplog):
    """A user that may not publish to spampots.edge1.>: connected, but nothing is taken."""
    op: Operator = nats_server_jwt.operator
    admin = cfg_for(nats_server_jwt.url, creds_file=write(tmp_path / "admin.creds", nats_server_jwt.secrets["creds"]))
    narrow = op.user_creds("edge1", pub={"allow": ["spampots.edge2.>", "$JS.API.>", "_INBOX.>"]})
    cfg = cfg_for(nats_server_jwt.url, creds_file=write(tmp_path / "edge1.creds", narrow))
    d = tmp_path / "edge1"
    with Recorder(d, "edge1") as rec:
        capture(rec, "edge1", 0, 50)

    async def main() -> Shipper:
        await init_network(admin, StreamSettings())
        stop = asyncio.Event()
        sh = Shipper(d, "edge1", cfg)
        t = asyncio.create_task(sh.run(stop))
        await wait_for(lambda: sh.stats.failures >= 1, 20, "a refused publish")
        stop.set()
        await t
        return sh

    with caplog.at_level(logging.INFO, logger="spampots.transport"):
        sh = asyncio.run(main())
    assert sh.stats.events == 0
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("NATS refused to take sensor edge1's data" in m and "spampots.edge1.>" in m for m in msgs), msgs


def test_mutual_tls_client_certificate(tmp_path, nats_server_mtls, caplog):
    s, url = nats_server_mtls.secrets, nats_server_mtls.url
    mine = dict(tls_ca=s["ca"], tls_cert=s["client_crt"], tls_key=s["client_key"])
    ship_and_collect(tmp_path / "ok", cfg_for(url, **mine))
    # each case its own stream and subjects: the same bodies again within the duplicate window of the
    # first one would be dropped by the broker, and these central stores are separate worlds
    for name, bad in (("none", dict(tls_ca=s["ca"])),
                      ("stranger", dict(tls_ca=s["ca"], tls_cert=s["stranger_crt"], tls_key=s["stranger_key"]))):
        # With TLS 1.3 the broker refuses a client certificate after the client's side of the
        # handshake: an attempt fails either with its alert (the ERROR line) or with the reset.
        caplog.clear()
        refused = refused_then_fixed(tmp_path / name, cfg_for(url, stream=name, subject_prefix=name, **mine),
                                     cfg_for(url, stream=name, subject_prefix=name, **bad), caplog,
                                     "TLS with NATS failed for sensor edge1", ("auth-failed", "unreachable"))
        assert "certificate" in refused[0], refused


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop privileges")
def test_sensor_that_dropped_root_reconnects_with_a_root_only_creds_file(tmp_path, nats_server_jwt):
    """The real sensor: config and creds read as root, then it runs as `nobody`, who cannot read
    the 0600 creds file in a 0700 directory; the broker restarts, the sensor must reconnect."""
    import smtplib
    import subprocess
    import sys

    from clients import make_message
    from conftest import start_sensor

    url = nats_server_jwt.url
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    creds = write(secret_dir / "edge1.creds", nats_server_jwt.secrets["creds"])
    init = subprocess.run([sys.executable, "-m", "spampots.transport.cli", "network", "init",
                           "--server", url, "--creds", creds], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    cfg = (f'[transport.nats]\nservers = ["{url}"]\ncreds_file = "{creds}"\nretry_max_s = 0.5\n'
           f'poll_interval_s = 0.05\nstatus_interval_s = 0.5\n[sensor]\nheartbeat_interval_s = 0.5\n')
    # the data dir under a world-searchable directory, so the sensor can drop root and still ship
    base = Path(tempfile.mkdtemp(prefix="spampots-auth-"))
    base.chmod(0o755)
    sp = start_sensor(tmp_path / "s", config=cfg, args=("--sensor-id", "edge1"), data_dir=base / "s")
    try:  # the shipper starts after the drop: even its first connection is made as `nobody`
        deadline = time.time() + 20
        while "connected to NATS" not in sp.stderr() and time.time() < deadline:
            time.sleep(0.1)
        nats_server_jwt.kill()
        time.sleep(1.0)
        nats_server_jwt.start()
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
            s.sendmail("a@spam.example", ["v@victim.example"], make_message(1, subject="after the restart"))
        deadline = time.time() + 20
        while sp.stderr().count("connected to NATS") < 2 and time.time() < deadline:
            time.sleep(0.1)
    finally:
        rc = sp.stop()
    log = sp.stderr()
    assert "dropped root privileges" in log
    assert log.split("dropped root privileges")[-1].count("connected to NATS") >= 2, log[-3000:]
    assert "refused the credentials" not in log, log[-3000:]
    assert rc == 0, log[-3000:]
    central = tmp_path / "central"
    good = cfg_for(url, creds_file=creds)

    async def collect() -> None:
        stop = asyncio.Event()
        col = Collector(central, good)
        t = asyncio.create_task(col.run(stop))
        await wait_for(lambda: col.stats.events >= total([sp.data_dir]), 30, "collecting")
        stop.set()
        await t

    try:
        asyncio.run(collect())
        assert_same(central, [sp.data_dir])
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
