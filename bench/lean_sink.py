"""The floor for Python: the leanest SMTP sink on asyncio.Protocol + uvloop.

    python bench/lean_sink.py PORT

Reads commands, answers 250/354/221 with fixed texts, finds the end of DATA
and throws the message away: no parsing beyond the verb, no events, no
storage. bench/smtp_capture.py runs it beside smtp-sink to show what one
Python process can do on this machine at all. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import sys


class LeanSmtp(asyncio.Protocol):
    __slots__ = ("transport", "buf", "in_data")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""
        self.in_data = False
        transport.write(b"220 lean ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while True:
            if self.in_data:
                j = buf.find(b"\n.\r\n")
                if j < 0:
                    break
                buf, self.in_data = buf[j + 4:], False
                out.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            j = buf.find(b"\n")
            if j < 0:
                break
            verb, buf = buf[:4].upper(), buf[j + 1:]
            if verb == b"DATA":
                self.in_data = True
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                buf = b"\n" + buf  # the end marker may follow DATA at once
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(out))  # type: ignore[attr-defined]
                self.transport.close()
                return
            else:
                out.append(b"250 2.0.0 Ok\r\n")
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(LeanSmtp, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(serve(int(sys.argv[1])))
