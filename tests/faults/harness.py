"""Runs the fault suite: for each backend one stack, and for each fault one burst of fresh
users with sockets open, the fault injected a third of the way in, then the check."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ..mailbox import Inbox
from .checker import Result, check, invite_states, quantiles, settle
from .injector import FAULTS, FaultStack, Timing, inject
from .sockets import SocketRecorder
from .workload import REQUEST_TIMEOUT_S, Http, Record, Size, User, Workload

log = logging.getLogger(__name__)


async def run_fault(target: FaultStack, fault: str, size: Size, seed: int) -> Result:
    loop = asyncio.get_running_loop()
    started = loop.time()
    record = Record()
    sockets: dict[int, SocketRecorder] = {}
    timing = Timing(size.down_s, size.redis_down_s, size.redis_stop_s)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        http = Http(session, target.url, record)
        workload = Workload(http, size, seed, Inbox(target.stack.mail_dir))

        def open_socket(user: User) -> None:
            recorder = SocketRecorder(target.url, user.id, user.token)
            recorder.start()
            sockets[user.id] = recorder

        workload.on_user.append(open_socket)
        try:
            await workload.setup()
            setup_counts = Counter(record.counts)
            set_up = loop.time()

            async def fault_task() -> str:
                await workload.done(size.fault_at)
                if workload.finished.is_set():
                    return "the burst ended before the fault"
                return await inject(fault, target, timing)

            injector = asyncio.create_task(fault_task())
            try:
                await workload.burst()
            finally:
                did = await injector
            burst_done = loop.time()
            exits = await asyncio.to_thread(target.make_whole)
            logs = await settle(http, sockets, size.settle_s)
            counts = check(record, logs, sockets, await invite_states(http))
            if trace_dir := os.environ.get("FAULTS_TRACE"):
                dump(Path(trace_dir) / f"{target.backend}-{fault}.txt", record, logs)
                for name in target.stack.procs:  # the processes' own logs (WARNING and up)
                    source = target.stack.log_path(name)
                    if source.exists():
                        copy = Path(trace_dir) / f"{target.backend}-{fault}-{name}.log"
                        copy.write_bytes(source.read_bytes())
        finally:
            await asyncio.gather(*(s.stop() for s in sockets.values()))
    notes = [f"{name} was down after the fault was undone" for name in exits]
    counts["exits"] += len(exits)
    if setup_counts:
        notes.append(f"during the setup, before the fault: {dict(setup_counts)}")
    all_changes = [t for series in record.latencies.values() for t in series]
    return Result(
        fault=fault,
        backend=target.backend,
        counts=counts,
        examples=dict(record.examples),
        invite_ms=quantiles(record.latencies["activity.invited"]),
        change_ms=quantiles(all_changes),
        seconds=loop.time() - started,
        phases=(set_up - started, burst_done - set_up, loop.time() - burst_done),
        did=did,
        notes=notes,
    )


def dump(path: Path, record: Record, logs: dict[int, list[dict[str, Any]]]) -> None:
    """Every call and every log of a run, to debug a count (FAULTS_TRACE=<dir>)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        out.writelines(line + "\n" for line in record.trace)
        for user_id, entries in logs.items():
            out.write(f"--- log of user {user_id}\n")
            out.writelines(
                f"{e['id']} {e['type']} {orjson.dumps(e['data']).decode()}\n" for e in entries
            )


async def run_backend(
    backend: str,
    size: Size,
    *,
    postgres_url: str | None,
    faults: Sequence[str] = FAULTS,
    report: Callable[[Result], None] = lambda r: None,
) -> list[Result]:
    """Every fault in turn on one stack on `backend`; a crash of the harness itself becomes
    a note in that fault's row rather than the end of the suite."""
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix=f"hc-faults-{backend}-") as tmp:
        target = FaultStack(backend, Path(tmp), postgres_url)
        await asyncio.to_thread(target.start)
        try:
            for n, fault in enumerate(faults):
                try:
                    result = await run_fault(target, fault, size, seed=n)
                except Exception as exc:
                    log.exception("the fault suite broke on %s/%s", fault, backend)
                    trace = traceback.format_exc(limit=3).splitlines()
                    result = Result(
                        fault,
                        backend,
                        Counter(exits=1),
                        {},
                        (0.0, 0.0),
                        (0.0, 0.0),
                        0.0,
                        notes=[f"the harness broke: {exc!r}", *trace],
                    )
                results.append(result)
                report(result)
                await asyncio.to_thread(target.make_whole)
        finally:
            await asyncio.to_thread(target.stop)
    return results
