"""`spampots notify` reports ready to send: ARF / X-ARF .eml, the contacts file, and --send through a
real SMTP server on loopback (aiosmtpd) that requires STARTTLS and AUTH."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from spampots import events as ev
from spampots.analysis.lake import Lake
from spampots.policy import arf, contacts
from spampots.policy.cli import main as policy_main
from spampots.store.messages import MessageStore
from test_analysis_pipeline import Capture, Sess
from test_policy_notify import TSV

SAMPLE = (b"Received: from pc1\r\nFrom: Spammer <a@spam.example>\r\nTo: u0@dom0.example\r\n"
          b"Subject: Cheap pills\r\nMessage-ID: <1@spam.example>\r\n\r\nBuy now\rbare CR\x00NUL\n"
          + b"x" * 1200 + b"\r\n--===============1==\r\n.\r\n")
EVIL_FROM = "a@spam.example\r\nBcc: victim@target.example"
CONTACTS = ("network,address\n# the NIC's desk\nAS22548,abuse@nic.example\nAS64500,abuse@evil.example\n"
            "AS19281,noc@quad9.example\n9.9.9.0/24,cidr@quad9.example\n")


def mail(s: Sess, sha: str, mail_from: str = "a@spam.example") -> Sess:
    s.cap.add(ev.SmtpMessage(helo="pc1", mail_from=mail_from, rcpts=["u0@dom0.example"], subject="x",
                             sha256=sha, size=100), s, 0, "smtp")
    return s


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arf")
    with MessageStore(root / "var", "br-dsl-1") as store:
        sha, _ = store.put(SAMPLE)
        store.sync()
    c = Capture(root / "var", sensor="br-dsl-1", day="2026-01-05")
    mail(c.session("200.160.2.3", 25, "smtp"), sha)                       # AS22548: the stored sample
    mail(c.session("7.7.7.7", 25, "smtp"), "1" * 64, mail_from=EVIL_FROM)  # AS64500: body not stored
    mail(c.session("9.9.9.9", 25, "smtp"), sha)                           # AS19281: a CIDR entry wins
    mail(c.session("5.5.5.5", 25, "smtp"), sha)                           # AS6805: no contact
    c.flush()
    (root / "asn.tsv").write_text(TSV)
    (root / "contacts.csv").write_text(CONTACTS)
    Lake(root / "var").compact()
    return root


def notify(data: Path, out: Path, *extra: str) -> int:
    return policy_main(["notify", "--data-dir", str(data / "var"), "--asn-db", str(data / "asn.tsv"), "-q",
                        "--out", str(out), "--contacts", str(data / "contacts.csv"), *extra])


def parse(path: Path) -> EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def test_arf_files(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert notify(data, out, "--reporter", "reports@honeypot.example") == 0
    shown = capsys.readouterr().out
    assert "1 networks have no abuse contact" in shown and "AS6805" in shown
    msg = parse(out / "AS22548.eml")
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "feedback-report"
    assert (msg["From"], msg["To"]) == ("reports@honeypot.example", "abuse@nic.example")
    human, report, sample = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "200.160.2.3 port 40000 -> our port 25/smtp: email (direct)" in text  # the evidence lines
    assert "Enclosed, as a sample, the message received at 2026-01-05T10:00:02Z from 200.160.2.3" in text
    assert report.get_content_type() == "message/feedback-report"
    fields = report.get_payload()[0]
    assert (fields["Feedback-Type"], fields["Version"], fields["Source-IP"], fields["Incidents"]) == \
        ("abuse", "1", "200.160.2.3", "1")
    assert fields["User-Agent"].startswith("spampots/") and fields["Reported-Domain"] == "spam.example"
    assert fields["Arrival-Date"] == "Mon, 05 Jan 2026 10:00:02 +0000"
    assert fields["Original-Mail-From"] == "<a@spam.example>"
    assert sample.get_content_type() == "message/rfc822"
    inner = sample.get_payload()[0]
    assert inner["Subject"] == "Cheap pills" and inner["Message-ID"] == "<1@spam.example>"
    raw = (out / "AS22548.eml").read_bytes()
    assert b"\x00" not in raw and all(len(ln) <= 998 for ln in raw.split(b"\r\n"))
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert "(cut to size)" in text  # the 1200-octet line
    # a CIDR entry overrides its AS; the index lists every network's contact, empty when none
    assert parse(out / "AS19281.eml")["To"] == "cidr@quad9.example"
    index = {r["network"]: r["contact"] for r in json.loads((out / "index.json").read_text())["networks"]}
    assert index == {"AS22548": "abuse@nic.example", "AS19281": "cidr@quad9.example",
                     "AS64500": "abuse@evil.example", "AS6805": ""}
    assert parse(out / "AS6805.eml")["To"] is None


def test_attacker_strings_in_reports(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert notify(data, out) == 0
    raw = (out / "AS64500.eml").read_bytes()
    msg = parse(out / "AS64500.eml")
    heads = [ln for ln in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")]
    assert not any(h.lower().startswith(b"bcc:") for h in raw.split(b"\r\n"))  # no injected header anywhere
    assert msg["Subject"].startswith("Abuse report: AS64500 EVIL\\x1b[31mNET\\u202eX,")
    assert all(h[:1] in (b" ", b"\t") or b":" in h for h in heads)
    _, report, sample = msg.get_payload()
    fields = report.get_payload()[0]
    assert fields["Original-Mail-From"] == "<a@spam.example\\x0d\\x0aBcc: victim@target.example>"
    assert "Reported-Domain" not in fields  # 'target.example' after a CRLF is no sender domain
    # the body is no longer stored: the envelope we saw, as text/rfc822-headers
    assert sample.get_content_type() == "text/rfc822-headers"
    assert "Return-Path: <a@spam.example\\x0d\\x0aBcc: victim@target.example>" in sample.get_content()
    assert "not enclosed: the store no longer holds it" in msg.get_payload()[0].get_content()


def test_headers_only_and_xarf(data: Path, tmp_path: Path) -> None:
    assert notify(data, tmp_path / "h", "--sample", "headers") == 0
    sample = parse(tmp_path / "h" / "AS22548.eml").get_payload()[2]
    assert sample.get_content_type() == "text/rfc822-headers"
    assert "Subject: Cheap pills" in sample.get_content() and "Buy now" not in sample.get_content()

    assert notify(data, tmp_path / "x", "--report", "xarf", "--reporter", "r@honeypot.example") == 0
    msg = parse(tmp_path / "x" / "AS22548.eml")
    assert msg["X-XARF"] == "PLAIN" and msg.get_content_type() == "multipart/mixed"
    human, report, sample = msg.get_payload()
    assert report.get_param("name") == "report.txt"
    doc = yaml.safe_load(report.get_content())
    assert {k: doc[k] for k in ("Reported-From", "Category", "Report-Type", "Version", "Source", "Source-Type",
                                "Attachment", "Schema-URL")} == {
        "Reported-From": "r@honeypot.example", "Category": "abuse", "Report-Type": "mail-spam", "Version": "0.2",
        "Source": "200.160.2.3", "Source-Type": "ipv4", "Attachment": "message/rfc822",
        "Schema-URL": arf.XARF_SCHEMA}
    assert sample.get_payload()[0]["Subject"] == "Cheap pills"


def test_contacts_file(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("AS1,a@one.example\n10.0.0.0/8,b@ten.example\n10.1.0.0/16,c@ten.example\n")
    book = contacts.load(p)
    assert book.for_ips([{"ip": "10.1.2.3", "as_number": 1}, {"ip": "10.2.0.1", "as_number": 1},
                         {"ip": "192.0.2.1", "as_number": 1}, {"ip": "192.0.2.2", "as_number": 2}]) == \
        ["a@one.example", "b@ten.example", "c@ten.example"]
    assert book.for_ip("::ffff:10.1.0.1", None) == "c@ten.example"
    for text, error in [("AS1,a@b.example\nas1,c@d.example\n", "line 2: AS1 is already on line 1"),
                        ("AS1,x@y.example\r\nBcc: z@w.example,q@r.example\n", "line 2: 'Bcc: z@w.example' is"),
                        ("AS1,Name <a@b.example>\n", "is not a plain address"),
                        ("nic.br,a@b.example\n", "neither an AS"), ("AS1\n", "want two cells")]:
        p.write_text(text)
        with pytest.raises(contacts.ContactsError, match=error.replace("(", r"\(")):
            contacts.load(p)


# -- sending, through a real SMTP server on loopback -----------------------------------------------
class Relay:
    """aiosmtpd on 127.0.0.1 with a certificate made here: STARTTLS and AUTH required."""

    def __init__(self, tmp: Path) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(self.cert), "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.received: list[tuple[float, str, list[str], bytes, bool]] = []
        self.peers: list[str] = []
        self.refuse: set[str] = set()  # recipients answered 550
        relay = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
                if address in relay.refuse:
                    return "550 5.1.1 no such mailbox"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
                relay.peers.append(session.peer[0])
                relay.received.append((time.monotonic(), envelope.mail_from, list(envelope.rcpt_tos),
                                       envelope.original_content, session.authenticated))
                return "250 OK"

        def auth(server, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"reporter", b"s3cret pw")
            return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=ctx,
                                     require_starttls=True, auth_required=True, auth_require_tls=True,
                                     authenticator=auth)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    r = Relay(tmp_path)
    conf = tmp_path / "relay.toml"
    conf.write_text(f'[relay]\nhost = "127.0.0.1"\nport = {r.port}\nsender = "reports@honeypot.example"\n'
                    f'cafile = "{r.cert}"\nrate = 120\nusername = "reporter"\n')
    monkeypatch.setenv("SPAMPOTS_RELAY_PASSWORD", "s3cret pw")  # the secret from the environment
    r.conf = conf  # type: ignore[attr-defined]
    yield r
    r.stop()


def test_send(data: Path, tmp_path: Path, relay: Relay, capsys: pytest.CaptureFixture[str]) -> None:
    # without --send nothing goes out
    assert notify(data, tmp_path / "dry", "--relay-config", str(relay.conf)) == 0  # type: ignore[attr-defined]
    assert relay.received == []
    assert notify(data, tmp_path / "a", "--send", "--relay-config", str(relay.conf)) == 0  # type: ignore[attr-defined]
    assert "sent 3, already sent before 0, refused 0" in capsys.readouterr().err
    got = relay.received
    assert sorted(r[2][0] for r in got) == ["abuse@evil.example", "abuse@nic.example", "cidr@quad9.example"]
    assert all(r[1] == "reports@honeypot.example" and r[4] for r in got)  # authenticated, after STARTTLS
    for r in got:
        msg = email.message_from_bytes(r[3], policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "feedback-report"
        assert msg.get_payload()[1].get_payload()[0]["Feedback-Type"] == "abuse"
        assert msg["To"] == r[2][0] and msg["From"] == "reports@honeypot.example"
    # rate 120 per minute: at least half a second between two messages (a floor, never a speed)
    assert all(b[0] - a[0] >= 0.45 for a, b in zip(got, got[1:]))
    log = [json.loads(ln) for ln in (tmp_path / "notify-sent.jsonl").read_text().splitlines()]
    assert sorted(r["network"] for r in log) == ["AS19281", "AS22548", "AS64500"]
    assert all((r["from"], r["to"]) == ("2026-01-05", "2026-01-05") for r in log)
    # a second run for the same period mails nobody again
    assert notify(data, tmp_path / "b", "--send", "--relay-config", str(relay.conf)) == 0  # type: ignore[attr-defined]
    assert "sent 0, already sent before 3" in capsys.readouterr().err
    assert len(relay.received) == 3
    assert set(relay.peers) == {"127.0.0.1"}  # nothing but loopback


def test_send_refusals(data: Path, tmp_path: Path, relay: Relay, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    conf = str(relay.conf)  # type: ignore[attr-defined]
    # wrong password: the relay refuses AUTH, nothing sent, nothing logged
    monkeypatch.setenv("SPAMPOTS_RELAY_PASSWORD", "wrong")
    assert notify(data, tmp_path / "a", "--send", "--relay-config", conf) == 1
    assert relay.received == [] and (tmp_path / "notify-sent.jsonl").read_text() == ""
    capsys.readouterr()
    # a recipient the relay refuses: the others go, that one is not logged, and the next run tries it again
    monkeypatch.setenv("SPAMPOTS_RELAY_PASSWORD", "s3cret pw")
    relay.refuse = {"abuse@nic.example"}
    assert notify(data, tmp_path / "r1", "--send", "--relay-config", conf) == 1
    assert "AS22548: refused by the relay" in capsys.readouterr().err
    assert sorted(r[2][0] for r in relay.received) == ["abuse@evil.example", "cidr@quad9.example"]
    relay.refuse = set()
    assert notify(data, tmp_path / "r2", "--send", "--relay-config", conf) == 0
    assert "sent 1, already sent before 2, refused 0" in capsys.readouterr().err
    assert [r[2] for r in relay.received[2:]] == [["abuse@nic.example"]]
    # no secrets on the command line, and --send needs contacts and --out
    with pytest.raises(SystemExit):
        notify(data, tmp_path / "b", "--send", "--relay-password", "x")
    assert policy_main(["notify", "--data-dir", str(data / "var"), "--send", "--relay-config", conf]) == 2
    assert "--send needs --out DIR" in capsys.readouterr().err
    # a password in a file others can read is refused
    bad = tmp_path / "bad.toml"
    bad.write_text('[relay]\nhost = "127.0.0.1"\nsender = "a@b.example"\npassword = "x"\nusername = "u"\n')
    bad.chmod(0o644)
    assert notify(data, tmp_path / "c", "--send", "--relay-config", str(bad)) == 2
    assert "others can read it" in capsys.readouterr().err
