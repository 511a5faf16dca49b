"""`spampots serve`: the web dashboard (aiohttp), read-only.

Every string on the page comes from an attacker, so the page is built with textContent only
(static/app.js) and served under a Content-Security-Policy that allows no inline script, no
inline style and nothing from another origin. Listening beyond loopback needs a token or
basic-auth credentials ([serve] in the config).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import duckdb
from aiohttp import web

from ..store.messages import MessageStore
from .live import LiveCounts
from .queries import DIMS, SHA256, Figures, message_view

log = logging.getLogger("spampots.serve")
STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin"}
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css", "world.json": "application/json",
                "LICENSES.txt": "text/plain"}
COOKIE = "spampots_token"
MAX_STREAMS = 32  # live pushes open at once; more get 503
LIVE_POLL_S = 0.5


@dataclass(frozen=True)
class Access:
    token: str = ""
    user: str = ""
    password: str = ""

    @property
    def open(self) -> bool:
        return not self.token and not (self.user and self.password)


def needs_credentials(address: str) -> bool:
    """True unless the address is loopback: anyone else who can reach it must authenticate."""
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:
        return True


def _allowed(request: web.Request, access: Access) -> bool:
    if access.open:
        return True
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if access.token:
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), access.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), access.token.encode()):
            return True
    if access.user and access.password and scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (hmac.compare_digest(user.encode(), access.user.encode())
                & hmac.compare_digest(password.encode(), access.password.encode()))
    return False


def make_app(figures: Figures, access: Access, *, refresh_s: float = 300.0) -> web.Application:
    data_dir = figures.settings.data_dir

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            resp: web.StreamResponse = web.Response(status=405, text="read-only\n", headers={"Allow": "GET, HEAD"})
        elif access.token and request.path == "/" and "token" in request.query:
            # a link with ?token=...: keep it in a cookie (EventSource cannot send a header)
            token = request.query["token"]
            if hmac.compare_digest(token.encode(), access.token.encode()):
                resp = web.Response(status=302, headers={"Location": "/"})
                resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/",
                                secure=request.secure)
            else:
                resp = web.Response(status=401, text="unauthorized\n")
        elif not _allowed(request, access):
            challenge = 'Basic realm="spampots", charset="UTF-8"' if access.user else 'Bearer realm="spampots"'
            resp = web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": challenge})
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as e:  # raised, not returned: answered as a plain response
                resp = web.Response(status=e.status, text=e.text, headers=e.headers)
        resp.headers.update(SECURITY_HEADERS)
        if request.path.startswith("/api/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    app = web.Application(middlewares=[guard], client_max_size=1024)
    live = LiveCounts(data_dir)
    app["figures"], app["live"], app["streams"] = figures, live, 0
    stopping = asyncio.Event()  # set on shutdown: the live streams end, so the server stops at once

    async def on_shutdown(_app: web.Application) -> None:
        stopping.set()

    app.on_shutdown.append(on_shutdown)

    async def index(_request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=(STATIC / name).read_bytes(), content_type=STATIC_FILES[name],
                            headers={"Cache-Control": "max-age=300"})

    def snapshot() -> Any:
        snap = figures.current
        if snap is None:
            raise web.HTTPServiceUnavailable(text="the figures are being computed\n", headers={"Retry-After": "5"})
        return snap

    async def overview(_request: web.Request) -> web.Response:
        return web.Response(body=snapshot().overview_json, content_type="application/json")

    async def series(request: web.Request) -> web.Response:
        q = request.query
        try:
            out = await asyncio.to_thread(snapshot().series, q.get("bucket", "day"), q.get("split", "protocol"),
                                          q.get("measure", "emails"))
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"{e}\n")
        return web.json_response(out, dumps=_dumps)

    async def drill(request: web.Request) -> web.Response:
        filters = {k: v[:1000] for k, v in request.query.items() if k in DIMS}
        try:
            out = await asyncio.to_thread(snapshot().drill, filters)
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"{e}\n")
        except duckdb.Error:  # a value of the wrong type for its column (e.g. day=abc)
            raise web.HTTPBadRequest(text="bad filter value\n")
        return web.json_response(out, dumps=_dumps)

    def _raw(sha: str) -> Optional[bytes]:
        try:
            with MessageStore(data_dir, readonly=True) as store:
                return store.get(sha)
        except (KeyError, OSError, ValueError, RuntimeError):
            return None
        except Exception as e:  # sqlite3 errors from a damaged index
            log.warning("message %s: %s", sha, e)
            return None

    async def message(request: web.Request) -> web.Response:
        sha = request.match_info["sha"]
        if not SHA256.match(sha):
            raise web.HTTPNotFound()
        raw = await asyncio.to_thread(_raw, sha)
        events = await asyncio.to_thread(snapshot().message_events, sha)
        if raw is None and not events:
            raise web.HTTPNotFound()
        view = message_view(raw) if raw is not None else None
        return web.json_response({"sha256": sha, "events": events, "message": view}, dumps=_dumps)

    async def eml(request: web.Request) -> web.Response:
        sha = request.match_info["sha"]
        if not SHA256.match(sha):
            raise web.HTTPNotFound()
        raw = await asyncio.to_thread(_raw, sha)
        if raw is None:
            raise web.HTTPNotFound()
        # octet-stream and attachment: the browser saves it, never renders it
        return web.Response(body=raw, content_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{sha}.eml"'})

    async def live_state(_request: web.Request) -> web.Response:
        return web.json_response(live.state(), dumps=_dumps)

    async def stream(request: web.Request) -> web.StreamResponse:
        if app["streams"] >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text="too many live pages open\n")
        app["streams"] += 1
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               **SECURITY_HEADERS})
            await resp.prepare(request)
            sent = -1
            shown = None  # the first pass tells the page which figures there are
            waited = 0.0
            while not stopping.is_set():
                state = live.state()
                now = figures.current.version if figures.current else ""
                if state["version"] != sent or waited >= 15:
                    await resp.write(f"event: live\ndata: {_dumps(state)}\n\n".encode())
                    sent, waited = state["version"], 0.0
                if now != shown:  # fresh figures: the page reloads its panels
                    shown = now
                    await resp.write(f"event: figures\ndata: {json.dumps(now)}\n\n".encode())
                await asyncio.sleep(0.2)
                waited += 0.2
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            app["streams"] -= 1
        return resp

    async def no_icon(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", no_icon)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/series", series)
    app.router.add_get("/api/drill", drill)
    app.router.add_get("/api/message/{sha}", message)
    app.router.add_get("/api/message/{sha}/eml", eml)
    app.router.add_get("/api/live", live_state)
    app.router.add_get("/api/stream", stream)

    async def follow(_app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                try:
                    await asyncio.to_thread(live.poll)
                except Exception:  # a damaged segment is counted by the reader; keep following
                    log.exception("live counters")
                await asyncio.sleep(LIVE_POLL_S)

        async def refresh() -> None:
            first = figures.current is None
            while True:
                if not first:
                    if refresh_s <= 0:
                        return
                    await asyncio.sleep(refresh_s)
                first = False
                try:
                    t = time.perf_counter()
                    await asyncio.to_thread(figures.refresh)
                    log.info("figures ready in %.1f s", time.perf_counter() - t)
                except Exception:
                    log.exception("computing the figures")

        tasks = [asyncio.create_task(loop()), asyncio.create_task(refresh())]
        yield
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        live.close()
        figures.close()

    app.cleanup_ctx.append(follow)
    return app


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)
