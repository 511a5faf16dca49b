"""atheris harness: TLS ClientHello reader (protocols/tls_hello.py). See _harness.py and README.md."""

import random

from _harness import atheris, context, drive, main

with atheris.instrument_imports(include=["spampots"]):
    from spampots.protocols.tls_hello import TlsHelloReader


def reply_ok(b: bytes) -> bool:
    return len(b) == 7 and b[0] == 0x15 and b[5] == 2  # one fatal alert record


def test_one(data: bytes) -> None:
    drive(TlsHelloReader(context(depth=1, target_host="www.example.com", target_port=443)), data, reply_ok)


def _seeds() -> list[bytes]:
    from spampots.loadgen.clients import client_hello
    hello = client_hello("www.example.com", random.Random(1))
    # the same hello split over two handshake records
    hs = hello[5:]
    two = b"\x16\x03\x01" + (40).to_bytes(2, "big") + hs[:40] + b"\x16\x03\x01" + (len(hs) - 40).to_bytes(2, "big") + hs[40:]
    return [hello, two, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"]


if __name__ == "__main__":
    main(test_one, _seeds(), "tls_hello")
