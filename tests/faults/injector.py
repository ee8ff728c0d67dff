"""The faults: kill -9 of a process then a restart, as a supervisor would, or Redis frozen.

A `FaultStack` is the system on real processes (tests/stack.py) with a Redis of its own
(tests/infra.py's RedisServer, AOF on), so that Redis too may be killed and restarted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from ..infra import RedisServer
from ..stack import MODULES, Stack

log = logging.getLogger(__name__)

# In the order they run; "none" is the baseline with no fault at all.
FAULTS = (
    "none",
    "kill-auth",
    "kill-connections",
    "kill-activities",
    "kill-gateway",
    "kill-redis",
    "stop-redis",
)


class FaultStack:
    """Services + gateway on `backend`, on a Redis the suite may kill."""

    def __init__(self, backend: str, root: Path, postgres_url: str | None) -> None:
        self.backend = backend
        self.redis = RedisServer(root / "redis")
        self.stack = Stack(
            backend=backend, root=root, redis_url=self.redis.url, postgres_url=postgres_url
        )

    @property
    def url(self) -> str:
        return self.stack.gateway_url

    def start(self) -> None:
        self.redis.start()
        self.stack.start()

    def stop(self) -> None:
        if self.redis.proc is not None:
            self.redis.proc.send_signal(signal.SIGCONT)  # a frozen Redis cannot stop
        self.stack.stop()
        self.redis.stop()

    def dead(self) -> list[str]:
        """Processes that are not running (none should be, outside a fault)."""
        procs = self.stack.procs
        names = [n for n in MODULES if n not in procs or procs[n].poll() is not None]
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            names.append("redis")
        return names

    def make_whole(self) -> list[str]:
        """Restart whatever is down; returns what was."""
        down = self.dead()
        if "redis" in down:
            self.redis.start()
        for name in down:
            if name != "redis":
                self.stack.start_process(name)
        self.stack.wait_healthy(60)
        return down


@dataclass(frozen=True)
class Timing:
    down_s: float  # a killed process stays down this long before its restart
    redis_down_s: float
    redis_stop_s: float


async def inject(fault: str, target: FaultStack, timing: Timing) -> str:
    """Apply `fault` and undo it (restart or SIGCONT); returns what was done, for the table."""
    if fault == "none":
        return "no fault"
    action, _, name = fault.partition("-")
    if name == "redis":
        proc = target.redis.proc
        assert proc is not None
        if action == "stop":
            proc.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(timing.redis_stop_s)
            finally:
                proc.send_signal(signal.SIGCONT)
            return f"redis frozen {timing.redis_stop_s:g} s"
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)
        await asyncio.sleep(timing.redis_down_s)
        await asyncio.to_thread(target.redis.start)
        return f"redis killed, restarted after {timing.redis_down_s:g} s"
    proc = target.stack.procs[name]
    proc.kill()
    await asyncio.to_thread(proc.wait, 10)
    await asyncio.sleep(timing.down_s)
    target.stack.start_process(name)
    return f"{name} killed, restarted after {timing.down_s:g} s"
