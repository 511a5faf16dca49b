"""atheris harness: HTTP proxy and origin server (protocols/http.py). See _harness.py and README.md.

The first data byte after the chunking byte's choice also picks the role (proxy/origin)."""

from _harness import atheris, context, drive, main

with atheris.instrument_imports(include=["spampots"]):
    from spampots.protocols.http import HttpServer


def reply_ok(b: bytes) -> bool:
    # one whole response per write (or a bare 100 Continue); SMTP replies only inside a body
    return b.startswith(b"HTTP/1.1 ") and b"\r\n\r\n" in b


def test_one(data: bytes) -> None:
    origin = len(data) > 1 and data[0] & 1
    ctx = context(depth=1, target_host="www.example.com", target_port=80) if origin else context()
    drive(HttpServer(ctx, role="origin" if origin else "proxy"), data, reply_ok)


SEEDS = [b"CONNECT mx.example.com:25 HTTP/1.1\r\nHost: mx.example.com:25\r\nProxy-Authorization: Basic dTpw\r\n\r\nEHLO x\r\n",
         b"GET http://azenv.net/ HTTP/1.1\r\nHost: azenv.net\r\n\r\nGET http://www.example.com/x HTTP/1.0\r\n\r\n",
         b"POST http://mx.example.com:25/ HTTP/1.1\r\nContent-Length: 60\r\n\r\nHELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n",
         b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n",
         b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: keep-alive\r\n\r\nHEAD /judge.php HTTP/1.1\r\n\r\n"]

if __name__ == "__main__":
    main(test_one, SEEDS, "http")
