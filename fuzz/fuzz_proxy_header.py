"""atheris harness: HAProxy PROXY protocol v1/v2 parser (protocols/proxy_header.py). See README.md.

Checked: no exception; a result comes at most once per header; a valid result's header
is a prefix of the input and header + rest is everything fed so far; addresses parse."""

import ipaddress

from _harness import atheris, chunks, main

with atheris.instrument_imports(include=["spampots"]):
    from spampots.protocols.proxy_header import ProxyHeaderParser


def test_one(data: bytes) -> None:
    parser = ProxyHeaderParser()
    fed = b""
    first = None
    for piece in chunks(data):
        fed += piece
        result = parser.feed(piece)
        if result is None:
            if first is not None:
                raise AssertionError("None after a result")
            continue
        if first is None:
            first = result
            if result.error is None:
                if result.version not in (1, 2) or result.header + result.rest != fed:
                    raise AssertionError(f"bad result {result!r} for {fed[:120]!r}")
                for ip in (result.src_ip, result.dst_ip):
                    if ip is not None:
                        ipaddress.ip_address(ip)
                if result.src_port is not None and not 0 <= result.src_port <= 65535:
                    raise AssertionError("port out of range")
            elif result.error == "proxy_header.missing" and result.rest != fed:
                raise AssertionError("bytes lost when no header")
        elif result.rest != piece:
            raise AssertionError("later feed did not pass bytes through")


SEEDS = [b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 1080\r\nGET / HTTP/1.1\r\n",
         b"PROXY TCP6 2001:db8::1 2001:db8::2 51234 1080\r\n\x05\x01\x00",
         b"PROXY UNKNOWN ffff\r\n",
         b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\x7f\x00\x00\x01\x04\xd2\x04\x38\x05",
         b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24" + bytes(36) + b"EHLO",
         b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"]

if __name__ == "__main__":
    main(test_one, SEEDS, "proxy_header")
