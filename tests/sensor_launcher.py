"""Runs `spampots` for the tests, optionally under an audit hook that logs every
outbound network operation (connect, name resolution, sendto) to a file.

With the hook on, the stdlib asyncio loop is used instead of uvloop, because
libuv's sockets do not raise Python audit events: the point is to see every
attempt.
"""

import os
import resource
import sys

nofile = os.environ.get("SPAMPOTS_TEST_NOFILE")  # "soft:hard": start under a low descriptor limit
if nofile:
    soft, hard = (int(n) for n in nofile.split(":"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

audit = os.environ.get("SPAMPOTS_TEST_AUDIT")
if audit:
    os.environ["SPAMPOTS_LOOP"] = "asyncio"
    WATCHED = {
        "socket.connect", "socket.connect_ex", "socket.getaddrinfo", "socket.gethostbyname",
        "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo", "socket.sendto",
        "socket.sendmsg",
    }
    log = open(audit, "a", buffering=1)

    def hook(event, args):
        if event in WATCHED:
            log.write(f"{event} {args!r}\n")

    sys.addaudithook(hook)

from spampots.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
