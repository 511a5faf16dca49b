"""Shared checks for the atheris harnesses: feed a sans-IO handler fuzzed bytes in
fuzzed chunks and fail on anything a well-behaved protocol machine must not do.

Input layout: the first byte picks the chunking (0xC0 and up: all at once;
otherwise chunks of 1 + byte % 64), the rest is the client's byte stream. Seeds
are therefore ``b"\\xff" + a valid message``.

Checked for every handler:
  * no exception escapes ``start`` / ``receive`` / ``eof``;
  * every action is bytes, an Event, Durable, Tunnel, StartTLS or Close;
  * every event encodes (msgspec) and carries none of the glue's common fields;
  * nothing but events follows a Close or a Tunnel, in that call or any later one;
  * the per-protocol ``reply_ok`` accepts every reply written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["spampots"]):
    from spampots.events import Event, encode  # noqa: E402
    from spampots.protocols.base import Close, Context, Durable, Limits, Persona, StartTLS, Tunnel  # noqa: E402

LIMITS = Limits(line_length=128, header_bytes=512, message_size=1024, recipients=5, payload_keep=64,
                messages_per_session=3, chain_depth=2)


def context(**kw: object) -> Context:
    return Context(limits=LIMITS, persona=Persona(smtp_tls=True, smtp_auth=True), tls_available=True,
                   now="Mon, 11 Jun 2007 10:00:00 -0300", **kw)  # type: ignore[arg-type]


def chunks(data: bytes) -> Iterable[bytes]:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode >= 0xC0:
        yield body
        return
    size = 1 + mode % 64
    for i in range(0, len(body), size):
        yield body[i : i + size]


class Checker:
    def __init__(self, reply_ok: Callable[[bytes], bool]) -> None:
        self.reply_ok = reply_ok
        self.ended = False

    def __call__(self, actions: list) -> list:
        if not isinstance(actions, list):
            raise AssertionError(f"actions must be a list, not {type(actions).__name__}")
        for a in actions:
            if isinstance(a, Event):
                encode(a)
                if a.session or a.src_ip or a.ts:
                    raise AssertionError(f"handler set a glue field on {type(a).__name__}")
                continue
            if self.ended:
                raise AssertionError(f"{type(a).__name__} after Close/Tunnel")
            if isinstance(a, bytes):
                if not self.reply_ok(a):
                    raise AssertionError(f"malformed reply {a[:80]!r}")
            elif isinstance(a, Durable):
                encode(a.event)
                if not isinstance(a.body, bytes):
                    raise AssertionError("Durable body is not bytes")
            elif isinstance(a, (Close, Tunnel)):
                self.ended = True
            elif not isinstance(a, StartTLS):
                raise AssertionError(f"unknown action {a!r}")
        return actions


def drive(handler: object, data: bytes, reply_ok: Callable[[bytes], bool],
          on_action: Optional[Callable[[object, list], None]] = None) -> None:
    check = Checker(reply_ok)
    check(handler.start())  # type: ignore[attr-defined]
    for piece in chunks(data):
        acts = check(handler.receive(piece))  # type: ignore[attr-defined]
        if on_action is not None:
            on_action(handler, acts)
    check(handler.eof())  # type: ignore[attr-defined]


def main(test_one: Callable[[bytes], None], seeds: list[bytes], name: str) -> None:
    """Run libFuzzer with ``sys.argv`` (e.g. ``-runs=1000000``); seeds go into a corpus dir
    given as the first non-flag argument, or a temporary one."""
    args = sys.argv[:]
    dirs = [a for a in args[1:] if not a.startswith("-")]
    if not dirs:
        corpus = Path("/tmp/spampots-fuzz") / name
        corpus.mkdir(parents=True, exist_ok=True)
        args.append(str(corpus))
        dirs = [str(corpus)]
    if Path(dirs[0]).is_dir():  # a corpus (a file argument is one input to replay, e.g. a crash)
        for i, seed in enumerate(seeds):
            path = Path(dirs[0]) / f"seed-{i:03d}"
            if not path.exists():
                path.write_bytes(b"\xff" + seed)
    atheris.Setup(args, test_one)
    atheris.Fuzz()
