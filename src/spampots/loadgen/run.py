"""The scheduler: start sessions from a mix at a rate, up to a concurrency, for a
count or a duration, from many source addresses; keep the ground truth.

Sources: on a loopback target every session binds one of ``sources`` distinct
127.x.y.z addresses (round robin), so per-source limits and ephemeral ports
behave as with many abusers. With ``proxy_protocol`` ("v1"/"v2") each session
starts with a PROXY header carrying a public address from a pool instead (the
sensor must list the generator in ``[proxy_protocol] trusted``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .clients import ClientError, Conn, proxy_header, run_plan
from .mix import Mix, Plan
from .truth import Tally


@dataclass
class Options:
    mix: Mix
    target: str = "127.0.0.1"
    port_offset: int = 0
    ports: dict[int, int] = field(default_factory=dict)  # talk port -> real port (overrides the offset)
    concurrency: int = 50
    rate: float = 0.0  # new sessions per second; 0 = as fast as the concurrency allows
    count: Optional[int] = None
    duration: Optional[float] = None
    sources: int = 1000  # distinct 127.x.y.z source addresses (loopback targets); 0 = the kernel's choice
    proxy_protocol: str = ""  # "", "v1", "v2"
    public_sources: int = 1000  # size of the public address pool for PROXY headers
    timeout: float = 30.0  # per read / connect
    loris_interval: float = 5.0
    seed: Optional[int] = None

    def port(self, talk_port: int) -> int:
        return self.ports.get(talk_port, talk_port + self.port_offset)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def loopback_sources(n: int) -> list[str]:
    """n distinct addresses in 127.0.0.0/8 (never .0 or .255 in any octet)."""
    out = []
    for i in range(n):
        a, rest = divmod(i, 254 * 254)
        b, c = divmod(rest, 254)
        out.append(f"127.{1 + a % 254}.{1 + b}.{1 + c}")
    return out


def public_sources(n: int, seed: int) -> list[str]:
    """n public IPv4 addresses: from real AS-named networks when the analysis data is
    installed (so enrichment has ASNs and countries to find), else random public space."""
    try:
        from ..analysis.synth import ip_pool
        return ip_pool(n, seed)[0]
    except Exception:  # the analysis extras are optional here
        pass
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if ip.is_global and not ip.is_multicast and str(ip).split(".")[-1] not in ("0", "255"):
            out.add(str(ip))
    return sorted(out)


class Runner:
    """One load run; ``tally`` is live while it runs (for progress displays)."""

    def __init__(self, opts: Options) -> None:
        if opts.count is None and opts.duration is None:
            raise ValueError("say how much: a count or a duration")
        self.opts = opts
        self.tally = Tally()
        self.seed = opts.seed if opts.seed is not None else random.SystemRandom().getrandbits(32)
        self.rng = random.Random(self.seed)
        loop_src = is_loopback(opts.target) and ipaddress.ip_address(opts.target).version == 4
        self.bind = loopback_sources(opts.sources) if (opts.sources and loop_src) else []
        self.public = public_sources(opts.public_sources, self.seed) if opts.proxy_protocol else []
        self.in_flight = 0
        self.loris_in_flight = 0
        self.wall_started = 0.0
        self.t0 = 0.0
        self.elapsed = 0.0
        self.stop = asyncio.Event()

    async def run(self) -> Tally:
        opts = self.opts
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(opts.concurrency)
        tasks: set[asyncio.Task] = set()
        self.t0 = loop.time()
        self.wall_started = time.time()
        deadline = self.t0 + opts.duration if opts.duration is not None else None
        i = 0
        try:
            while opts.count is None or i < opts.count:
                if opts.rate > 0:
                    delay = self.t0 + i / opts.rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await sem.acquire()
                if deadline is not None and loop.time() >= deadline:
                    sem.release()
                    break
                task = loop.create_task(self._session(i, self.opts.mix.plan(self.rng)))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), sem.release()))
                i += 1
            # slow-loris sessions last until the server ends them; the run ends them
            # once every other session is done (count) or at the deadline (duration)
            while tasks and self.in_flight > self.loris_in_flight:
                if deadline is not None and loop.time() >= deadline:
                    break
                await asyncio.sleep(0.05)
            self.stop.set()
            if tasks:
                await asyncio.wait(tasks, timeout=opts.timeout + 5)
        finally:
            for t in tasks:
                t.cancel()
            self.elapsed = loop.time() - self.t0
        return self.tally

    async def _session(self, i: int, plan: Plan) -> None:
        opts = self.opts
        loop = asyncio.get_running_loop()
        bind = self.bind[i % len(self.bind)] if self.bind else None
        shown = self.public[i % len(self.public)] if self.public else (bind or "kernel")
        self.tally.start(plan, shown)
        self.in_flight += 1
        loris = plan.outcome == "slowloris"
        self.loris_in_flight += loris
        started = loop.time()
        result = None
        failure = ""
        conn: Optional[Conn] = None
        try:
            port = opts.port(plan.port)
            r, w = await asyncio.wait_for(
                asyncio.open_connection(opts.target, port, local_addr=(bind, 0) if bind else None),
                opts.timeout)
            conn = Conn(r, w, opts.timeout)
            if opts.proxy_protocol:
                sport = w.get_extra_info("sockname")[1]
                conn.write(proxy_header(opts.proxy_protocol, shown, opts.target, sport, port))
            result = await run_plan(conn, plan, random.Random(plan.seed), pipelining=opts.mix.pipelining,
                                    loris_interval=opts.loris_interval, stop=self.stop)
        except ClientError as exc:
            failure = exc.stage
        except (asyncio.TimeoutError, TimeoutError):
            failure = "timeout" if conn is not None else "connect timeout"
        except ConnectionRefusedError:
            failure = "connect refused"
        except (ConnectionError, OSError) as exc:
            failure = "reset" if conn is not None else f"connect {type(exc).__name__}"
        finally:
            if conn is not None:
                conn.close()
            self.in_flight -= 1
            self.loris_in_flight -= loris
            self.tally.finish(plan, result, loop.time() - started, failure)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(opts: Options, *, progress: Optional[Callable[["Runner"], None]] = None,
        progress_every: float = 0.25) -> Runner:
    """Run to completion (blocking); ``progress`` is called with the runner now and then."""
    install_uvloop()
    runner = Runner(opts)

    async def main() -> None:
        runner.stop = asyncio.Event()
        ticker = None
        if progress is not None:
            async def tick() -> None:
                while True:
                    progress(runner)
                    await asyncio.sleep(progress_every)
            ticker = asyncio.get_running_loop().create_task(tick())
        try:
            await runner.run()
        finally:
            if ticker is not None:
                ticker.cancel()
            if progress is not None:
                progress(runner)

    asyncio.run(main())
    return runner
