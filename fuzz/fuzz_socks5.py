"""atheris harness: SOCKS5 server with RFC 1929 auth (protocols/socks5.py). See _harness.py and README.md."""

from _harness import atheris, context, drive, main

with atheris.instrument_imports(include=["spampots"]):
    from spampots.protocols.socks5 import Socks5Server


def reply_ok(b: bytes) -> bool:
    if len(b) == 2:  # method choice or auth status
        return b[0] in (5, 1)
    return len(b) == 10 and b[:1] == b"\x05" and b[2] == 0 and b[3] == 1


def test_one(data: bytes) -> None:
    drive(Socks5Server(context()), data, reply_ok)


SEEDS = [b"\x05\x01\x00\x05\x01\x00\x03\x0emx.example.com\x00\x19",
         b"\x05\x01\x02\x01\x04user\x04pass\x05\x01\x00\x01\xc0\x00\x02\x01\x00\x19",
         b"\x05\x01\x00\x05\x01\x00\x04" + bytes(15) + b"\x01\x01\xbb",
         b"\x05\x01\x00\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00", b"\x05\x01\x00\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x35"]

if __name__ == "__main__":
    main(test_one, SEEDS, "socks5")
