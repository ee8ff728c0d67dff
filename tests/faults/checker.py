"""The fault suite's checker: every change that took effect against every recipient's
notification log and socket frames, counted per category, and the table of the counts."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from .sockets import SocketRecorder, id_key
from .workload import EXAMPLES_KEPT, Expected, Http, Record

# Must be 0 once issue #7 is resolved. `KNOWN_OPEN` (see test_faults.py) names those that
# the current code is known to break.
ZERO = (
    "lost",
    "duplicated",
    "unexpected",
    "server_errors",
    "refused",
    "late_cancel",
    "missed_cancel",
    "unbound",
    "stale",
    "order",
    "order_cascade",
    "ws_lost",
    "ws_dup",
    "wrong_data",
    "other_4xx",
    "exits",
)
COLUMNS = (
    # (counter, header)
    ("changes", "changes"),
    ("ambiguous", "ambig"),
    ("s503", "503"),
    ("dropped", "drop"),
    ("server_errors", "5xx"),
    ("lost", "lost"),
    ("duplicated", "dup"),
    ("unexpected", "unexp"),
    ("refused", "refused"),
    ("late_cancel", "late"),
    ("missed_cancel", "missed"),
    ("unbound", "unbound"),
    ("stale", "stale"),
    ("order", "order"),
    ("order_cascade", "ordcas"),
    ("ws_lost", "wslost"),
    ("ws_dup", "wsdup"),
    ("wrong_data", "wrong"),
    ("other_4xx", "4xx"),
    ("exits", "exits"),
)
LEGEND = [
    "changes: changes that took effect; ambig: applied but answered 503 or nothing, the retry",
    "  got 409; 503, drop: answers retried; 5xx: any other 5xx; lost, dup, unexp: the logs",
    "  against the changes; refused: invites 403 not_connected after the accept returned;",
    "  late: invite_cancelled of an invite newer than the removal; missed: a removal that",
    "  returned but left the pair's pending invite open; unbound: a sign-up's invitation not",
    "  the new client's when the sign-up returned; stale: a 409 from a state older than a",
    "  change that had returned (an invite a removal should have cancelled, or one a late",
    "  removal cancelled); order: notifications out of",
    "  the order of the changes (ordcas: the late one made by another service reacting to the",
    "  change, e.g. a removal's invite_cancelled); wslost, wsdup: socket frames against the",
    "  log; wrong: data differs from the change's answer; 4xx: other unexpected answers;",
    "  exits: processes that died by themselves. Latencies in ms from the first attempt to",
    "  the final answer, retries included (inv: invites; chg: every change).",
]
LATE_SLACK_S = 0.005
QUIET_S = 10.0  # clocks: the services' ms timestamps against ours


@dataclass
class Result:
    """The counts of one fault on one backend."""

    fault: str
    backend: str
    counts: Counter[str]
    examples: dict[str, list[str]]
    invite_ms: tuple[float, float]  # median, p99 of the invites that succeeded
    change_ms: tuple[float, float]
    seconds: float
    phases: tuple[float, float, float] = (0.0, 0.0, 0.0)  # set-up, burst, settle and check
    did: str = ""
    notes: list[str] = field(default_factory=list)

    def failures(self, categories: tuple[str, ...]) -> dict[str, int]:
        return {c: self.counts[c] for c in categories if self.counts[c]}


def entity(kind: str, data: dict[str, Any]) -> int | None:
    """The id a notification is about: with its type, unique per recipient here."""
    for part in ("connection", "invite", "activity"):
        if isinstance(data.get(part), dict):
            return data[part].get("id")
    return None


def quantiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return (pick(0.5) * 1000, pick(0.99) * 1000)


async def read_log(http: Http, user_id: int) -> list[dict[str, Any]]:
    user = http.record.users[user_id]
    entries: list[dict[str, Any]] = []
    since = "0"
    while True:
        query = urlencode({"since": since, "limit": 200})
        page = await http.read(f"/api/notifications?{query}", user)
        entries += page
        if len(page) < 200:
            return entries
        since = page[-1]["id"]


async def invite_states(http: Http) -> dict[int, str]:
    """Every client's invites as the server holds them now: id -> status."""
    clients = [u for u in http.record.users.values() if u.role == "client"]
    pages = await asyncio.gather(*(http.read("/api/activities/list?limit=200", u) for u in clients))
    return {i["id"]: i["status"] for page in pages for i in page}


async def settle(
    http: Http, sockets: dict[int, SocketRecorder], within: float
) -> dict[int, list[dict[str, Any]]]:
    """Read every log until each holds its expected notifications (or `within` runs out),
    then wait for each socket to have reached the end of its user's log."""
    record = http.record
    wanted: Counter[int] = Counter(e.recipient for e in record.expected)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    logs: dict[int, list[dict[str, Any]]] = {}
    total, quiet_since = -1, loop.time()
    while True:
        users = list(record.users)
        pages = await asyncio.gather(*(read_log(http, u) for u in users))
        logs = dict(zip(users, pages, strict=True))
        if all(len(logs[u]) >= wanted[u] for u in users) or loop.time() > deadline:
            break
        if sum(map(len, pages)) != total:
            total, quiet_since = sum(map(len, pages)), loop.time()
        elif loop.time() - quiet_since > QUIET_S:
            break  # nothing new for a while: what is missing is not coming
        await asyncio.sleep(0.25)
    await asyncio.sleep(0.5)  # anything duplicated or late shows up by now
    users = list(record.users)
    logs = dict(zip(users, await asyncio.gather(*(read_log(http, u) for u in users)), strict=True))
    left = max(5.0, deadline - loop.time())
    await asyncio.gather(
        *(s.wait_for(logs[u][-1]["id"] if logs.get(u) else None, left) for u, s in sockets.items())
    )
    return logs


def check(
    record: Record,
    logs: dict[int, list[dict[str, Any]]],
    sockets: dict[int, SocketRecorder],
    invites: dict[int, str],
) -> Counter[str]:
    counts = record.counts  # record.note() counts into it
    counts["changes"] = len(record.changes)
    by_user: dict[int, dict[tuple[str, int], Expected]] = {}
    for exp in record.expected:
        by_user.setdefault(exp.recipient, {})[(exp.type, exp.key)] = exp
    for user_id, log in logs.items():
        _check_log(record, user_id, log, by_user.get(user_id, {}), invites)
    for user_id, recorder in sockets.items():
        _check_socket(record, user_id, logs.get(user_id, []), recorder)
    return counts


def _check_log(
    record: Record,
    user_id: int,
    log: list[dict[str, Any]],
    expected: dict[tuple[str, int], Expected],
    invites: dict[int, str],
) -> None:
    present = {(e.get("type", ""), entity(e.get("type", ""), e.get("data") or {})) for e in log}
    # A removal that returned without cancelling the pair's pending invite: its
    # invite_cancelled never comes, the invite stays open (or a later deletion of the
    # activity cancels it, with activity.cancelled).
    missed: set[int] = set()
    for kind, key in expected:
        if kind == "activity.invite_cancelled" and (kind, key) not in present:
            rec = record.invites.get(key)
            by_deletion = rec is not None and ("activity.cancelled", rec.activity_id) in present
            if invites.get(key) not in (None, "cancelled") or by_deletion:
                missed.add(key)
    seen: Counter[tuple[str, int]] = Counter()
    matched: list[tuple[Expected, dict[str, Any]]] = []
    for entry in log:
        kind, data = entry.get("type", ""), entry.get("data") or {}
        key = (kind, entity(kind, data) or 0)
        seen[key] += 1
        if seen[key] > 1:
            record.note("duplicated", f"user {user_id}: {kind} {key[1]} again as {entry['id']}")
            continue
        exp = expected.get(key)
        if exp is None:
            if kind == "activity.cancelled" and any(
                record.invites[i].activity_id == key[1] for i in missed
            ):
                continue  # the deletion of an activity whose invite a removal left open
            if kind == "activity.invite_cancelled" and _late(record, key[1]):
                record.note(
                    "late_cancel",
                    f"user {user_id}: invite {key[1]} cancelled, though created after a "
                    "removal of its pair had returned",
                )
            else:
                record.note("unexpected", f"user {user_id}: {kind} {key[1]} ({entry['id']})")
            continue
        matched.append((exp, entry))
        if exp.data is not None and data != exp.data:
            record.note(
                "wrong_data", f"user {user_id}: {kind} {key[1]}: {data} instead of {exp.data}"
            )
        if kind == "activity.invite_cancelled":
            cancelled_at = _wall(data["invite"]["updated_at"])
            if cancelled_at < exp.change.wall_sent - LATE_SLACK_S:
                record.note(
                    "late_cancel",
                    f"user {user_id}: invite {key[1]} cancelled "
                    f"{(exp.change.wall_sent - cancelled_at) * 1000:.0f} ms before the removal "
                    "that should cancel it was sent",
                )
    for (kind, key), exp in expected.items():
        if (
            kind == "activity.cancelled"
            and not seen[(kind, key)]
            and any(
                rec.activity_id == key and ("activity.invite_cancelled", i) in present
                for i, rec in record.invites.items()
                if rec.pair[1] == user_id
            )
        ):
            # A removal's cascade cancelled the invite before the deletion, though the
            # lane still saw it open after that removal returned (counted as stale or late).
            continue
        if key in missed and kind == "activity.invite_cancelled":
            record.note(
                "missed_cancel",
                f"user {user_id}: invite {key} not cancelled by the {exp.change.op} by "
                f"{exp.change.actor} (now {invites.get(key)})"
                f"{', ambiguous' if exp.change.ambiguous else ''}",
            )
        elif not seen[(kind, key)]:
            record.note(
                "lost",
                f"user {user_id}: no {kind} {key} ({exp.change.op} by {exp.change.actor}"
                f"{', ambiguous' if exp.change.ambiguous else ''})",
            )
    # Order: a notification must not come after one whose change was sent only after its
    # own change had returned. Walk back keeping the earliest return seen later in the log.
    earliest_later: tuple[float, Expected | None] = (float("inf"), None)
    for exp, entry in reversed(matched):
        later_returned, later = earliest_later
        if later is not None and later_returned < exp.change.sent:
            record.note(
                "order_cascade" if later.cascade else "order",
                f"user {user_id}: {later.type} {later.key} ({later.change.op}) comes after "
                f"{exp.type} {exp.key} ({entry['id']}), though its change returned "
                f"{(exp.change.sent - later_returned) * 1000:.0f} ms before that one's was sent",
            )
        if exp.change.returned < later_returned:
            earliest_later = (exp.change.returned, exp)


def _late(record: Record, invite_id: int) -> bool:
    """The invite was created after a removal of its pair had returned."""
    invite = record.invites.get(invite_id)
    if invite is None:
        return False
    return any(r < invite.created_sent for r in record.removals.get(invite.pair, []))


def _wall(timestamp: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _check_socket(
    record: Record,
    user_id: int,
    log: list[dict[str, Any]],
    recorder: SocketRecorder,
) -> None:
    """The frames of all the user's connections together are their log: each entry once,
    in order, the same content."""
    got: dict[str, dict[str, Any]] = {}
    previous = (0, 0)
    for frame in recorder.frames:
        message = frame.message
        if message.get("type") == "reset":
            record.note("ws_lost", f"user {user_id}: reset frame {message}")
            continue
        key = id_key(message["id"])
        if message["id"] in got or key <= previous:
            record.note("ws_dup", f"user {user_id}: frame {message['id']} after {previous}")
            continue
        previous = key
        got[message["id"]] = message
    for entry in log:
        if got.get(entry["id"]) != entry:
            record.note(
                "ws_lost",
                f"user {user_id}: log entry {entry['id']} {entry['type']} "
                f"{'differs on' if entry['id'] in got else 'never came over'} the socket "
                f"({recorder.sessions} connections)",
            )
    in_log = {e["id"] for e in log}
    about = Counter((m["type"], entity(m["type"], m.get("data") or {})) for m in got.values())
    for frame_id in sorted(set(got) - in_log):
        message = got[frame_id]
        key = (message["type"], entity(message["type"], message.get("data") or {}))
        if about[key] > 1:
            # Sent, then gone from the log (a Redis that lost its last writes) and appended
            # again under a new id: the user got it twice.
            record.note(
                "ws_dup",
                f"user {user_id}: {key[0]} {key[1]} came as {frame_id}, which the log lost, "
                "and again under a new id",
            )
        else:
            record.note("unexpected", f"user {user_id}: socket frame {frame_id} not in the log")


def table(results: list[Result], title: str) -> str:
    """Faults x backends x counters, plus the latency of invites and of all changes."""
    heads = [h for _, h in COLUMNS]
    lines = [title]
    header = (
        f"{'fault':<17} {'db':<8} "
        + " ".join(f"{h:>{max(len(h), 4)}}" for h in heads)
        + f" {'inv p50':>8} {'inv p99':>8} {'chg p99':>8} {'secs':>5} {'(set-up+burst+check)':>20}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for r in results:
        cells = " ".join(f"{r.counts[c]:>{max(len(h), 4)}}" for c, h in COLUMNS)
        lines.append(
            f"{r.fault:<17} {r.backend:<8} {cells} {r.invite_ms[0]:>8.0f} {r.invite_ms[1]:>8.0f} "
            f"{r.change_ms[1]:>8.0f} {r.seconds:>5.0f} "
            f"{'+'.join(f'{p:.0f}' for p in r.phases):>20}"
        )
    lines += LEGEND
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    """A few examples of every non-zero category, to start debugging from."""
    lines: list[str] = []
    for r in results:
        shown = [c for c in (*ZERO, "ambiguous") if r.counts[c] and r.examples.get(c)]
        if not shown and not r.notes:
            continue
        lines.append(f"{r.fault} on {r.backend} ({r.did}):")
        lines += [f"  ! {n}" for n in r.notes]
        for c in shown:
            lines.append(f"  {c} ({r.counts[c]}):")
            lines += [f"    - {e}" for e in r.examples[c][:EXAMPLES_KEPT]]
    return "\n".join(lines)
