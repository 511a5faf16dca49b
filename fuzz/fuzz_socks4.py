"""atheris harness: SOCKS4 / SOCKS4a server (protocols/socks4.py). See _harness.py and README.md."""

from _harness import atheris, context, drive, main

with atheris.instrument_imports(include=["spampots"]):
    from spampots.protocols.socks4 import Socks4Server


def reply_ok(b: bytes) -> bool:
    return len(b) == 8 and b[0] == 0 and b[1] in (0x5A, 0x5B)


def test_one(data: bytes) -> None:
    drive(Socks4Server(context()), data, reply_ok)


SEEDS = [b"\x04\x01\x00\x19\xc0\x00\x02\x01user\x00", b"\x04\x01\x00\x19\x00\x00\x00\x01u\x00mx.example.com\x00",
         b"\x04\x02\x00\x15\x7f\x00\x00\x01\x00", b"\x04\x01\x00\x19\x00\x00\x00\x01\x00\x00"]

if __name__ == "__main__":
    main(test_one, SEEDS, "socks4")
