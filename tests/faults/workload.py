"""The fault suite's workload: lanes of one professional and one client each making changes
through the gateway, retrying as a mobile client would, and recording which notification
every change that took effect owes to whom.

A lane is sequential and owns its pair and its activities, so it knows at every moment
which invites are pending and hence exactly what each change must notify. Lanes run
concurrently, so the professionals (several lanes each) and the clients with two lanes
get notifications from concurrent changes, which is what the order check needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from ..mailbox import VERIFY_SUBJECT, Inbox, code_of

log = logging.getLogger(__name__)

PASSWORD = "fault suite password"
RETRY_FOR_S = 90.0  # a change is given up after this long of 503s and dropped connections
BACKOFF_S = (0.05, 0.1, 0.2, 0.3, 0.5)
REQUEST_TIMEOUT_S = 20.0
EXAMPLES_KEPT = 5


@dataclass(frozen=True)
class Size:
    """How big a run is: changes per fault, users, and how long each fault lasts."""

    changes: int
    pros: int
    clients: int
    second_lanes: int  # clients with a lane to a second professional as well
    newcomer_lanes: int  # lanes that invite an unknown email, which then signs up
    fault_at: float = 0.3  # the fault starts once this share of the changes is done
    down_s: float = 1.0  # a killed process is restarted after this long
    redis_down_s: float = 3.0
    redis_stop_s: float = 10.0
    settle_s: float = 30.0  # how long every expected notification may take to show up
    activities_per_lane: int = 2  # created before the burst; lanes create more as needed

    @classmethod
    def named(cls, name: str) -> Size:
        if name == "short":
            # Small enough for `make test` on 2 cores (~1 minute per backend): Redis is
            # frozen 5 s instead of 10, the rest as in the long form.
            return cls(
                changes=100,
                pros=3,
                clients=8,
                second_lanes=2,
                newcomer_lanes=2,
                down_s=0.5,
                redis_down_s=2.0,
                redis_stop_s=5.0,
                settle_s=15.0,
                activities_per_lane=1,
            )
        if name == "long":
            return cls(
                changes=1000,
                pros=5,
                clients=30,
                second_lanes=8,
                newcomer_lanes=4,
                redis_down_s=10.0,
                settle_s=60.0,
            )
        raise ValueError(f"unknown size {name!r} (short or long)")


@dataclass
class User:
    id: int
    role: str
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def party(self) -> dict[str, Any]:
        """The user as a connection's party (the names the workload signs up with)."""
        return {"id": self.id, "name": f"Fault {self.role}", "email": self.email}


@dataclass
class Change:
    """One change that took effect: its first attempt was sent at `sent`, the final
    answer came at `returned` (monotonic clock); `wall_sent` is the same on the wall clock,
    to compare with the timestamps the services write."""

    op: str
    actor: int
    sent: float
    returned: float
    wall_sent: float
    status: int
    attempts: int
    ambiguous: bool = False


@dataclass
class Expected:
    """A notification a change owes: `type` about entity `key` to `recipient`."""

    recipient: int
    type: str
    key: int
    change: Change
    data: dict[str, Any] | None = None  # the notification's exact data, when known
    # Made by another service reacting to the change's event (a removal's cancelled
    # invites, a sign-up's bound invitation), not by the change's own transaction.
    cascade: bool = False


@dataclass
class InviteRec:
    id: int
    activity_id: int
    pair: tuple[int, int]
    status: str
    created_sent: float  # monotonic, when the request that created it was first sent


@dataclass
class Reply:
    status: int  # 0: no answer at all (every attempt dropped, for RETRY_FOR_S)
    body: Any
    sent: float
    returned: float
    wall_sent: float
    attempts: int
    troubled: bool  # an earlier attempt got 5xx or no answer: it may have been applied
    replayed: bool

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    def after_trouble(self, status: int) -> bool:
        """The retry got `status` because an unanswered earlier attempt was applied."""
        return self.troubled and self.status == status


@dataclass
class Record:
    """Everything the checker needs from a run of the workload."""

    users: dict[int, User] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    expected: list[Expected] = field(default_factory=list)
    invites: dict[int, InviteRec] = field(default_factory=dict)
    removals: dict[tuple[int, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    trace: list[str] = field(default_factory=list)  # every call and its answers, to debug

    def note(self, category: str, text: str, n: int = 1) -> None:
        self.counts[category] += n
        if len(self.examples[category]) < EXAMPLES_KEPT:
            self.examples[category].append(text)


class Http:
    """Calls through the gateway. Every POST and DELETE carries an Idempotency-Key, and a
    503 or a dropped connection is retried with the same key, as a mobile client would."""

    def __init__(self, session: aiohttp.ClientSession, base: str, record: Record) -> None:
        self.session = session
        self.base = base
        self.record = record

    async def call(
        self, method: str, path: str, user: User | None, body: Any = None, *, what: str = ""
    ) -> Reply:
        headers = dict(user.headers) if user else {}
        if method in ("POST", "PATCH", "DELETE"):
            headers["Idempotency-Key"] = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        sent, wall_sent = loop.time(), time.time()
        attempts, troubled = 0, False
        label = what or f"{method} {path}"
        while True:
            attempts += 1
            try:
                async with self.session.request(
                    method, self.base + path, json=body, headers=headers
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    replayed = resp.headers.get("Idempotent-Replayed", "").lower() == "true"
                    retry_after = resp.headers.get("Retry-After", "")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.record.trace.append(f"{label} {path} {body} as {user and user.id}: {exc!r}")
                self.record.note("dropped", f"{label}: {exc!r}")
                troubled = True
                if loop.time() - sent > RETRY_FOR_S:
                    return Reply(0, None, sent, loop.time(), wall_sent, attempts, True, False)
                await asyncio.sleep(BACKOFF_S[min(attempts - 1, len(BACKOFF_S) - 1)])
                continue
            parsed = orjson.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode(errors="replace")
            self.record.trace.append(
                f"{label} {path} {body} as {user and user.id}: {status} {str(parsed)[:300]}"
            )
            if status >= 500:
                if status == 503:
                    self.record.counts["s503"] += 1
                else:
                    self.record.note("server_errors", f"{label} -> {status}: {str(parsed)[:200]}")
                troubled = True
                if loop.time() - sent <= RETRY_FOR_S:
                    wait = BACKOFF_S[min(attempts - 1, len(BACKOFF_S) - 1)]
                    if retry_after.isdigit():
                        wait = min(float(retry_after), 1.0)
                    await asyncio.sleep(wait)
                    continue
            if replayed:
                self.record.counts["replayed"] += 1
            return Reply(status, parsed, sent, loop.time(), wall_sent, attempts, troubled, replayed)

    async def read(self, path: str, user: User) -> Any:
        """A GET that must succeed (retried through faults like a change)."""
        reply = await self.call("GET", path, user)
        if reply.status != 200:
            raise RuntimeError(f"GET {path} as user {user.id} -> {reply.status}: {reply.body}")
        return reply.body


class Workload:
    """Users, lanes and the shared change budget of one run."""

    def __init__(self, http: Http, size: Size, seed: int, inbox: Inbox) -> None:
        self.http = http
        self.inbox = inbox  # the stack's mail sink: verification codes come from there
        self.record = http.record
        self.size = size
        self.rng = random.Random(seed)
        self.tag = uuid.uuid4().hex[:8]
        self.lanes: list[Lane] = []
        self.pros: list[User] = []
        self.spent = 0
        self.progress = asyncio.Event()  # set at each change, for whoever waits on `done`
        self.finished = asyncio.Event()
        self.on_user: list[Any] = []  # callbacks for each new user (open their socket)
        self._serial = 0

    def email(self, role: str) -> str:
        self._serial += 1
        return f"fault-{role}-{self.tag}-{self._serial}@example.com"

    async def signup(self, role: str, email: str | None = None) -> tuple[User | None, Reply]:
        """Sign up (a change); on an ambiguous 409 `email_taken`, log in instead."""
        email = email or self.email(role)
        body = {"name": f"Fault {role}", "email": email, "password": PASSWORD, "role": role}
        reply = await self.http.call("POST", "/api/auth/signup", None, body, what="signup")
        if reply.ok:
            user = User(reply.body["user"]["id"], role, email, reply.body["token"])
        elif reply.after_trouble(409):
            login = await self.http.call(
                "POST", "/api/auth/login", None, {"email": email, "password": PASSWORD}
            )
            if not login.ok:
                raise RuntimeError(f"login after an ambiguous signup -> {login.status}")
            user = User(login.body["user"]["id"], role, email, login.body["token"])
        else:
            self.record.note("other_4xx", f"signup {email} -> {reply.status} {reply.body}")
            return None, reply
        self.record.users[user.id] = user
        for callback in self.on_user:
            callback(user)
        return user, reply

    async def verify(self, user: User) -> Reply | None:
        """Verify the user's address with the code of the mail that their sign-up sent
        (email invitations bind to verified addresses only); None if no mail came."""
        try:
            # A sender killed while holding a claim leaves it for the lease (MAIL_CLAIM_SECONDS).
            message = await self.inbox.latest(user.email, VERIFY_SUBJECT, within=90)
        except AssertionError:
            self.record.note("other_4xx", f"no verification mail for user {user.id}")
            return None
        body = {"token": code_of(message)}
        reply = await self.http.call("POST", "/api/auth/verify-email", None, body, what="verify")
        if not reply.ok and not reply.troubled:
            self.record.note("other_4xx", f"verify {user.id} -> {reply.status} {reply.body}")
        return reply

    async def setup(self) -> None:
        """Every user and every lane's first activities, before the burst (not counted)."""
        size = self.size
        gate = asyncio.Semaphore(8)

        async def one(role: str) -> User:
            async with gate:
                user, _ = await self.signup(role)
                assert user is not None
                if role == "client":
                    verified = await self.verify(user)
                    assert verified is not None and verified.ok, "setup: verification failed"
            return user

        self.pros = list(await asyncio.gather(*(one("professional") for _ in range(size.pros))))
        clients = list(await asyncio.gather(*(one("client") for _ in range(size.clients))))
        pairs = [(self.pros[i % size.pros], c) for i, c in enumerate(clients)]
        pairs += [
            (self.pros[(i + 1) % size.pros], c) for i, c in enumerate(clients[: size.second_lanes])
        ]
        self.lanes = [Lane(self, pro, client, seed=self.rng.random()) for pro, client in pairs]
        self.lanes += [
            Lane(self, self.pros[i % size.pros], None, seed=self.rng.random())
            for i in range(size.newcomer_lanes)
        ]
        async with asyncio.TaskGroup() as tasks:
            for lane in self.lanes:
                tasks.create_task(lane.prepare())

    def count_change(self, reply: Reply, op: str, actor: int, *, ambiguous: bool = False) -> Change:
        change = Change(
            op,
            actor,
            reply.sent,
            reply.returned,
            reply.wall_sent,
            reply.status,
            reply.attempts,
            ambiguous,
        )
        self.record.changes.append(change)
        self.record.latencies[op].append(reply.returned - reply.sent)
        if ambiguous:
            self.record.note("ambiguous", f"{op} by {actor}: answered {reply.status} on a retry")
        self.spent += 1
        self.progress.set()
        return change

    def expect(
        self,
        recipient: int,
        kind: str,
        key: int,
        change: Change,
        data: Any = None,
        *,
        cascade: bool = False,
    ) -> None:
        self.record.expected.append(Expected(recipient, kind, key, change, data, cascade))

    @property
    def budget_spent(self) -> bool:
        return self.spent >= self.size.changes

    async def done(self, share: float) -> None:
        """Return once `share` of the budget is spent (or the burst is over)."""
        while self.spent < share * self.size.changes and not self.finished.is_set():
            self.progress.clear()
            await self.progress.wait()

    async def burst(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                for lane in self.lanes:
                    tasks.create_task(lane.run())
        finally:
            self.finished.set()
            self.progress.set()


class Lane:
    """One professional and one client cycling: connect, accept, invite, answer, remove.

    A newcomer lane has no client at first: each cycle the professional invites an email
    nobody uses yet and a new client signs up with it.
    """

    def __init__(self, wl: Workload, pro: User, client: User | None, *, seed: float) -> None:
        self.wl = wl
        self.http = wl.http
        self.record = wl.record
        self.pro = pro
        self.client = client
        self.newcomer = client is None
        self.rng = random.Random(seed)
        self.activities: list[int] = []
        self.invites: dict[int, InviteRec] = {}  # activity id -> the client's latest invite
        self.history: list[InviteRec] = []  # every invite of the lane, earlier clients' too
        self.conn_id: int | None = None
        self.conn_status = "closed"  # closed (none, rejected or removed), pending, accepted
        self.initiator = "client"
        self.just_accepted = False
        self.accepted_at = 0.0  # when the latest accept returned (monotonic)
        self.unbound: set[int] = set()  # invitations a new client could not see at first

    @property
    def pair(self) -> tuple[int, int]:
        assert self.client is not None
        return (self.pro.id, self.client.id)

    async def prepare(self) -> None:
        for _ in range(self.wl.size.activities_per_lane):
            await self.create_activity(counted=False)

    async def run(self) -> None:
        while not self.wl.budget_spent:
            try:
                await self.step()
            except (RuntimeError, KeyError, TypeError) as exc:
                # A broken assumption of the lane (an answer it cannot read): note it and
                # start over from what the server says, rather than stop the burst.
                self.record.note("other_4xx", f"lane {self.pair_text}: {exc!r}")
                await asyncio.sleep(0.2)
                with contextlib.suppress(RuntimeError):
                    await self.resync_connection()

    @property
    def pair_text(self) -> str:
        return f"pro {self.pro.id}/client {self.client.id if self.client else None}"

    async def step(self) -> None:
        if self.conn_status == "closed":
            await self.connect()
        elif self.conn_status == "pending":
            await self.answer_connection()
        elif self.just_accepted:
            await self.invite()  # at once: read-your-writes across services
        else:
            pending = [i for i in self.invites.values() if i.status == "pending"]
            roll = self.rng.random()
            if roll < 0.35 and len(pending) < 2:
                await self.invite()
            elif roll < 0.65 and pending:
                await self.answer_invite(self.rng.choice(pending))
            elif roll < 0.72 and self.activities:
                await self.delete_activity()
            else:
                await self.remove()

    # --- connections ----------------------------------------------------------------

    async def connect(self) -> None:
        if self.newcomer:
            await self.connect_newcomer()
            return
        assert self.client is not None
        if self.rng.random() < 0.5:
            self.initiator = "client"
            reply = await self.http.call(
                "POST",
                "/api/connection/request-pro",
                self.client,
                {"professional_id": self.pro.id},
                what="request-pro",
            )
            recipient, kind = self.pro.id, "connection.requested"
        else:
            self.initiator = "professional"
            reply = await self.http.call(
                "POST",
                "/api/connection/invite-client",
                self.pro,
                {"client_email": self.client.email},
                what="invite-client",
            )
            recipient, kind = self.client.id, "connection.invited"
        actor = self.client.id if self.initiator == "client" else self.pro.id
        if reply.ok:
            change = self.wl.count_change(reply, kind, actor)
            self.conn_id, self.conn_status = reply.body["id"], "pending"
            seen = reply.body
            if kind == "connection.invited":
                # The professional's answer shows the client only as the address typed;
                # the client's notification shows them themself.
                seen = {**seen, "client": self.client.party}
            self.wl.expect(recipient, kind, self.conn_id, change, {"connection": seen})
        elif reply.after_trouble(409) and await self.resync_connection():
            change = self.wl.count_change(reply, kind, actor, ambiguous=True)
            assert self.conn_id is not None
            self.wl.expect(recipient, kind, self.conn_id, change)
        else:
            self.unexpected(kind, reply)

    async def connect_newcomer(self) -> None:
        """The professional invites an unknown email; its owner signs up, verifies the
        address with the mailed code (which binds the invitation), finds the invitation in
        their list and accepts it."""
        email = self.wl.email("newcomer")
        reply = await self.http.call(
            "POST",
            "/api/connection/invite-client",
            self.pro,
            {"client_email": email},
            what="invite-email",
        )
        if not reply.ok:
            # A retried invitation of an address nobody has: without its id the lane
            # cannot follow it; try another address.
            self.unexpected("invite-email", reply, ambiguous_ok=True)
            return
        self.wl.count_change(reply, "invite-email", self.pro.id)
        conn_id = reply.body["id"]
        client, signed = await self.wl.signup("client", email)
        if client is None:
            return
        self.wl.count_change(signed, "signup", client.id, ambiguous=not signed.ok)
        verified = await self.wl.verify(client)
        if verified is None:
            return
        change = self.wl.count_change(verified, "verify", client.id, ambiguous=not verified.ok)
        self.client, self.invites, self.initiator = client, {}, "professional"
        self.conn_id, self.conn_status = conn_id, "pending"
        self.wl.expect(client.id, "connection.invited", conn_id, change, cascade=True)
        listed = await self.http.read("/api/connection/list?limit=200", client)
        if not any(c["id"] == conn_id for c in listed):
            self.unbound.add(conn_id)
            self.record.note(
                "unbound",
                f"connection {conn_id} not in the list of client {client.id} right after "
                "the verification that binds it returned",
            )

    async def answer_connection(self) -> None:
        assert self.client is not None and self.conn_id is not None
        responder = self.pro if self.initiator == "client" else self.client
        initiator = self.client if self.initiator == "client" else self.pro
        accept = self.rng.random() < 0.9
        kind = "connection.accepted" if accept else "connection.rejected"
        reply = await self.http.call(
            "POST",
            "/api/connection/respond",
            responder,
            {"connection_id": self.conn_id, "action": "accept" if accept else "reject"},
            what="respond-connection",
        )
        if reply.ok:
            change = self.wl.count_change(reply, kind, responder.id)
            seen = reply.body
            if not accept and self.initiator == "professional":
                # Until the client accepts, the professional sees only the address typed.
                seen = {**seen, "client": {"id": None, "name": None, "email": self.client.email}}
            self.wl.expect(initiator.id, kind, self.conn_id, change, {"connection": seen})
        elif reply.after_trouble(409):
            change = self.wl.count_change(reply, kind, responder.id, ambiguous=True)
            self.wl.expect(initiator.id, kind, self.conn_id, change)
        elif reply.status == 404 and self.newcomer:
            # The invitation bound by the sign-up that returned is not the client's yet:
            # counted once per invitation, then tried again.
            if self.conn_id not in self.unbound:
                self.unbound.add(self.conn_id)
                self.record.note(
                    "unbound",
                    f"client {self.client.id} answering connection {self.conn_id} after the "
                    "verification that binds it returned -> 404",
                )
            await asyncio.sleep(0.2)
            return
        else:
            self.unexpected(kind, reply)
            await self.resync_connection()
            return
        self.conn_status = "accepted" if accept else "closed"
        self.just_accepted = accept
        self.accepted_at = reply.returned

    async def remove(self) -> None:
        assert self.client is not None and self.conn_id is not None
        by_client = self.rng.random() < 0.5
        actor, other = (self.client, self.pro) if by_client else (self.pro, self.client)
        reply = await self.http.call(
            "DELETE", f"/api/connection/{self.conn_id}", actor, what="remove-connection"
        )
        ambiguous = reply.after_trouble(409)
        if not reply.ok and not ambiguous:
            self.unexpected("connection.removed", reply)
            await self.resync_connection()
            return
        change = self.wl.count_change(reply, "connection.removed", actor.id, ambiguous=ambiguous)
        self.wl.expect(other.id, "connection.removed", self.conn_id, change)
        for invite in self.invites.values():
            if invite.status == "pending":
                invite.status = "cancelled"
                self.wl.expect(
                    self.client.id, "activity.invite_cancelled", invite.id, change, cascade=True
                )
        self.record.removals[self.pair].append(reply.returned)
        self.conn_status = "closed"
        if self.newcomer:
            self.client = None

    # --- activities -----------------------------------------------------------------

    async def create_activity(self, *, counted: bool = True) -> bool:
        reply = await self.http.call(
            "POST",
            "/api/activities/",
            self.pro,
            {"title": "Fault drill", "description": "the fault suite's activity"},
            what="create-activity",
        )
        if not reply.ok:
            self.unexpected("create-activity", reply)
            return False
        if counted:
            self.wl.count_change(reply, "create-activity", self.pro.id)
        self.activities.append(reply.body["id"])
        return True

    async def invite(self) -> None:
        assert self.client is not None
        self.just_accepted = False
        free = [
            a
            for a in self.activities
            if a not in self.invites or self.invites[a].status in ("declined", "cancelled")
        ]
        if not free:
            if not await self.create_activity():
                return
            free = [self.activities[-1]]
        activity_id = self.rng.choice(free)
        reply = await self.http.call(
            "POST",
            "/api/activities/invite",
            self.pro,
            {"activity_id": activity_id, "client_id": self.client.id},
            what="invite",
        )
        if reply.ok:
            if reply.troubled:
                await self.find_applied_invites(reply, activity_id, but=reply.body["id"])
            change = self.wl.count_change(reply, "activity.invited", self.pro.id)
            self.track_invite(reply.body["id"], activity_id, reply.sent)
            self.wl.expect(
                self.client.id, "activity.invited", reply.body["id"], change, {"invite": reply.body}
            )
            return
        if reply.status == 403 and reply.code == "not_connected":
            self.record.note(
                "refused",
                f"invite of client {self.client.id} by pro {self.pro.id} refused "
                f"{(reply.sent - self.accepted_at) * 1000:.0f} ms after connection "
                f"{self.conn_id} was accepted",
            )
        if reply.status in (0, 403, 409) or reply.status >= 500:
            # What does the server hold? An attempt that went unanswered may have created
            # the invite (whatever the retry got); or an invite the lane thought cancelled
            # is still open (a removal that did not cancel it).
            found = await self.resync_invite(activity_id)
            if found is not None and found["id"] not in self.record.invites:
                if not reply.troubled:
                    self.unexpected("activity.invited", reply)
                    return
                status = found["status"]
                change = self.wl.count_change(
                    reply, "activity.invited", self.pro.id, ambiguous=True
                )
                self.track_invite(found["id"], activity_id, reply.sent).status = status
                self.wl.expect(self.client.id, "activity.invited", found["id"], change)
                return
            if reply.status == 409 and found is not None:
                rec = self.record.invites[found["id"]]
                self.record.note(
                    "stale",
                    f"invite -> 409 already_invited for invite {found['id']} of "
                    f"{self.pair_text}, which the lane had as {rec.status}; the list now "
                    f"says {found['status']}",
                )
                rec.status = found["status"]
                return
        if reply.status not in (403,):
            self.unexpected("activity.invited", reply)

    async def find_applied_invites(self, reply: Reply, activity_id: int, *, but: int) -> None:
        """An unanswered attempt created an invite, and the retry created another (the
        first was cancelled meanwhile, so no 409): the change was applied twice."""
        assert self.client is not None
        invites = await self.http.read("/api/activities/list?limit=200", self.client)
        for found in invites:
            if found["activity"]["id"] != activity_id or found["id"] in self.record.invites:
                continue
            if found["id"] == but:
                continue
            self.record.note(
                "ambiguous",
                f"invite of {self.pair_text} applied twice: by an unanswered attempt "
                f"(invite {found['id']}, now {found['status']}) and by its retry ({but})",
            )
            change = self.wl.count_change(reply, "activity.invited", self.pro.id)
            self.track_invite(found["id"], activity_id, reply.sent).status = found["status"]
            self.wl.expect(self.client.id, "activity.invited", found["id"], change)

    def track_invite(self, invite_id: int, activity_id: int, sent: float) -> InviteRec:
        rec = InviteRec(invite_id, activity_id, self.pair, "pending", sent)
        self.invites[activity_id] = rec
        self.history.append(rec)
        self.record.invites[invite_id] = rec
        return rec

    async def answer_invite(self, invite: InviteRec) -> None:
        assert self.client is not None
        accept = self.rng.random() < 0.5
        kind = "activity.invite_accepted" if accept else "activity.invite_declined"
        reply = await self.http.call(
            "POST",
            "/api/activities/respond",
            self.client,
            {"invite_id": invite.id, "action": "accept" if accept else "decline"},
            what="respond-invite",
        )
        if reply.ok:
            change = self.wl.count_change(reply, kind, self.client.id)
            invite.status = reply.body["status"]
            self.wl.expect(self.pro.id, kind, invite.id, change, {"invite": reply.body})
            return
        found = await self.resync_invite(invite.activity_id)
        status = found["status"] if found and found["id"] == invite.id else None
        if reply.after_trouble(409) and status in ("accepted", "declined"):
            kind = f"activity.invite_{status}"
            change = self.wl.count_change(reply, kind, self.client.id, ambiguous=True)
            invite.status = status
            self.wl.expect(self.pro.id, kind, invite.id, change)
        elif reply.status == 409 and status == "cancelled":
            # Cancelled behind the lane's back: by a late removal of an earlier
            # connection of the pair (the checker counts its notification).
            invite.status = "cancelled"
            self.record.note(
                "stale",
                f"answer to invite {invite.id} of {self.pair_text} -> 409: it was cancelled "
                "behind the lane's back",
            )
        else:
            self.unexpected(kind, reply)

    async def delete_activity(self) -> None:
        activity_id = self.rng.choice(self.activities)
        reply = await self.http.call(
            "DELETE", f"/api/activities/{activity_id}", self.pro, what="delete-activity"
        )
        ambiguous = reply.after_trouble(404)
        if not reply.ok and not ambiguous:
            self.unexpected("activity.cancelled", reply)
            return
        change = self.wl.count_change(reply, "activity.cancelled", self.pro.id, ambiguous=ambiguous)
        self.activities.remove(activity_id)
        # Every client with a pending or accepted invite: a newcomer lane's earlier
        # clients keep their accepted invites after their connection is removed.
        notified = set()
        for invite in self.history:
            if invite.activity_id == activity_id and invite.status in ("pending", "accepted"):
                notified.add(invite.pair[1])
                invite.status = "cancelled"
        for client_id in sorted(notified):
            self.wl.expect(client_id, "activity.cancelled", activity_id, change)

    # --- what the server says ---------------------------------------------------------

    async def resync_connection(self) -> bool:
        """Take the pair's newest connection from the client's lists; True if it is newer
        than the one the lane knew (a change the lane did not see answered)."""
        if self.client is None:
            return False
        found: list[dict[str, Any]] = []
        for query in ({"limit": 200}, {"limit": 200, "status": "removed"}):
            found += await self.http.read("/api/connection/list?" + urlencode(query), self.client)
        mine = [c for c in found if c["professional"]["id"] == self.pro.id]
        if not mine:
            self.conn_id, self.conn_status = None, "closed"
            return False
        newest = max(mine, key=lambda c: c["id"])
        newer = self.conn_id is None or newest["id"] > self.conn_id
        self.conn_id = newest["id"]
        self.initiator = newest["initiated_by"]
        self.conn_status = {"pending": "pending", "accepted": "accepted"}.get(
            newest["status"], "closed"
        )
        return newer

    async def resync_invite(self, activity_id: int) -> dict[str, Any] | None:
        """The client's newest invite to `activity_id`, as the client's list shows it."""
        assert self.client is not None
        invites = await self.http.read("/api/activities/list?limit=200", self.client)
        mine = [i for i in invites if i["activity"]["id"] == activity_id]
        return max(mine, key=lambda i: i["id"]) if mine else None

    def unexpected(self, what: str, reply: Reply, *, ambiguous_ok: bool = False) -> None:
        if reply.status == 0 or reply.status >= 500:
            return  # given up after RETRY_FOR_S: already counted as dropped or 5xx
        if ambiguous_ok and reply.troubled:
            self.record.note("ambiguous", f"{what} by {self.pair_text}: {reply.status}")
            return
        self.record.note(
            "other_4xx",
            f"{what} ({self.pair_text}, conn {self.conn_id}) -> {reply.status} "
            f"{reply.code or reply.body}",
        )
