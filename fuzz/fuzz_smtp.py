"""atheris harness: SMTP server (protocols/smtp.py), STARTTLS emulated. See _harness.py and README.md."""

from _harness import atheris, context, drive, main

with atheris.instrument_imports(include=["spampots"]):
    from spampots.protocols.base import StartTLS
    from spampots.protocols.smtp import SmtpServer


def reply_ok(b: bytes) -> bool:
    """One or more complete replies: lines 'NNN-text' continuing, 'NNN text' ending, one code each."""
    lines = b.split(b"\r\n")
    if lines[-1] != b"" or len(lines) < 2:
        return False
    code = None
    for ln in lines[:-1]:
        if len(ln) < 4 or not ln[:3].isdigit() or ln[3:4] not in (b" ", b"-"):
            return False
        if code is not None and ln[:3] != code:
            return False
        code = ln[:3] if ln[3:4] == b"-" else None
    return code is None


def after(handler: SmtpServer, actions: list) -> None:
    if any(isinstance(a, StartTLS) for a in actions):
        handler.tls_established()  # what the glue does once the handshake is through


def test_one(data: bytes) -> None:
    tunnel = len(data) > 1 and data[0] & 1
    ctx = context(depth=1, target_host="mx.example.com", target_port=25, via=("socks5:mx.example.com:25",)) \
        if tunnel else context()
    drive(SmtpServer(ctx, banner_host=ctx.target_host, now=ctx.now), data, reply_ok, after)


SEEDS = [b"EHLO x\r\nMAIL FROM:<a@b> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: hi\r\n\r\n..x\r\n.\r\nQUIT\r\n",
         b"HELO y\nAUTH PLAIN AHUAcA==\nMAIL FROM:<>\nRCPT TO:<c@d>\nDATA\nbody\n.\nRSET\nNOOP\nVRFY u\nHELP\n",
         b"EHLO x\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nSTARTTLS\r\nEHLO z\r\nMAIL FROM:<a@b>\r\n",
         b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<3@d>\r\nRCPT TO:<4@d>\r\nRCPT TO:<5@d>\r\nRCPT TO:<6@d>\r\nDATA\r\n" + b"x" * 5000 + b"\r\n.\r\n"]

if __name__ == "__main__":
    main(test_one, SEEDS, "smtp")
