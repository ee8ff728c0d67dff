// HealthConnect live demo: REST calls through the gateway, live notifications over /api/ws.
// Plain DOM, no framework. User text only ever goes through textContent (never innerHTML).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const store = window.sessionStorage;
  const KEY = { token: "hc.token", refresh: "hc.refresh", user: "hc.user" };
  const FEED_MAX = 100;

  let user = null; // the signed-in User
  let socket = null; // the open (or opening) WebSocket
  let connecting = false;
  let attempt = 0; // reconnect attempts since the last successful open
  let retryTimer = null;
  let connections = [];
  let activities = [];

  // ---------------------------------------------------------------- DOM helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, String(value));
    }
    node.append(...children.filter((c) => c !== null && c !== undefined)); // strings become text
    return node;
  }

  function button(label, testid, id, onClick, cls) {
    return el("button", { type: "button", "data-testid": testid, id, class: cls, onclick: onClick, text: label });
  }

  const empty = (text) => el("li", { class: "empty", text });
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

  function showError(err) {
    $("error-text").textContent = err && err.message ? err.message : String(err);
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error-text").textContent = "";
  }

  function showNotice(text) {
    $("notice-text").textContent = text;
    $("notice").hidden = false;
  }

  // ---------------------------------------------------------------- REST

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code; // the problem's stable `code`, e.g. "mfa_required"
    }
  }

  let refreshing = null; // one refresh at a time, shared by every call that got a 401

  function refreshTokens() {
    const refreshToken = store.getItem(KEY.refresh);
    if (!refreshToken) return Promise.resolve(false);
    if (!refreshing) {
      refreshing = fetch("/api/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: refreshToken }),
      })
        .then(async (resp) => {
          if (!resp.ok) return false;
          saveSession(await resp.json());
          return true;
        })
        .finally(() => {
          refreshing = null;
        });
    }
    return refreshing;
  }

  async function api(method, path, body, retried = false) {
    const headers = {};
    const token = store.getItem(KEY.token);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 401 && token && !retried) {
      if (await refreshTokens()) return api(method, path, body, true);
      endSession();
      throw new ApiError(401, "Your session has ended: please log in again.");
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!resp.ok) {
      const detail = data && (data.detail || data.title);
      throw new ApiError(resp.status, detail || `${resp.status} ${resp.statusText}`, data && data.code);
    }
    return data;
  }

  // Run an action from a button or form, show its error, then reload what it changed.
  async function act(control, promiseFn, ...reloads) {
    clearError();
    $("notice").hidden = true;
    if (control) control.disabled = true;
    try {
      await promiseFn();
      reload(...reloads);
      return true;
    } catch (err) {
      showError(err);
      return false;
    } finally {
      if (control) control.disabled = false;
    }
  }

  // ---------------------------------------------------------------- lists

  const seq = {}; // latest request per list: an older, slower answer never overwrites a newer one
  async function latest(name, path) {
    const n = (seq[name] = (seq[name] || 0) + 1);
    const data = await api("GET", path);
    return n === seq[name] && user ? data : null;
  }

  const loaders = {
    async connections() {
      const list = await latest("connections", "/api/connection/list");
      if (list) renderConnections(list);
    },
    async activities() {
      const list = await latest("activities", "/api/activities/list");
      if (list) renderActivities(list);
    },
    async professionals() {
      if (user.role !== "client") return;
      const list = await latest("professionals", "/api/users?role=professional&limit=200");
      if (!list) return;
      const select = $("request-pro");
      const previous = select.value;
      select.replaceChildren(
        el("option", { value: "", text: list.length ? "Choose a professional…" : "No professionals yet" }),
        ...list.map((p) => el("option", { value: p.id, text: `${p.name} (${p.email})` })),
      );
      select.value = list.some((p) => String(p.id) === previous) ? previous : "";
    },
    async sessions() {
      const list = await latest("sessions", "/api/auth/sessions?limit=200");
      if (list) renderSessions(list);
    },
  };

  const pending = new Set();
  let reloadTimer = null;
  function reload(...what) {
    // Coalesce bursts (a replay after a reconnect) into one request per list.
    what.forEach((w) => pending.add(w));
    if (reloadTimer || !pending.size) return;
    reloadTimer = setTimeout(() => {
      reloadTimer = null;
      const names = [...pending];
      pending.clear();
      if (!user) return;
      for (const name of names) loaders[name]().catch(showError);
    }, 20);
  }

  function renderConnections(list) {
    connections = list;
    const mine = user.role;
    const items = list.map((c) => {
      const other = mine === "client" ? c.professional : c.client;
      const actions = el("span", { class: "actions" });
      if (c.status === "pending" && c.initiated_by !== mine) {
        const respond = (action) => (ev) =>
          act(ev.target, () => api("POST", "/api/connection/respond", { connection_id: c.id, action }), "connections");
        actions.append(
          button("Accept", "connection-accept", `connection-accept-${c.id}`, respond("accept"), "primary"),
          button("Reject", "connection-reject", `connection-reject-${c.id}`, respond("reject")),
        );
      }
      if (c.status === "pending" || c.status === "accepted") {
        actions.append(
          button("Remove", "connection-remove", `connection-remove-${c.id}`, (ev) =>
            act(ev.target, () => api("DELETE", `/api/connection/${c.id}`), "connections", "activities"),
          ),
        );
      }
      return el(
        "li",
        { id: `connection-${c.id}`, "data-testid": "connection", "data-id": c.id, "data-status": c.status },
        // Until a client accepts an invitation, the professional sees only the address typed.
        el("span", { class: "name", text: other.name || "(invited: not accepted yet)" }),
        el("span", { class: "muted", text: other.email }),
        el("span", { class: `badge ${c.status}`, "data-testid": "connection-status", text: c.status }),
        el("span", { class: "muted", text: c.initiated_by === mine ? "sent by you" : "sent to you" }),
        actions,
      );
    });
    $("connections").replaceChildren(...(items.length ? items : [empty("No connections yet.")]));
    if (mine === "professional") renderActivities(activities); // the invite pickers follow the connections
  }

  function connectedClients() {
    return connections.filter((c) => c.status === "accepted" && c.client.id !== null).map((c) => c.client);
  }

  function clientName(id) {
    const client = connections.map((c) => c.client).find((c) => c && c.id === id);
    return client ? client.name : `client #${id}`;
  }

  function renderActivities(list) {
    activities = list;
    const items = user.role === "professional" ? list.map(activityItem) : list.map(inviteItem);
    const none = user.role === "professional" ? "No activities yet." : "No invitations yet.";
    // Keep a half-filled invite picker's choice across re-renders.
    const chosen = {};
    document.querySelectorAll("select[data-activity]").forEach((s) => (chosen[s.dataset.activity] = s.value));
    const editing = keepEdits();
    $("activities").replaceChildren(...(items.length ? items : [empty(none)]));
    document.querySelectorAll("select[data-activity]").forEach((s) => {
      if ([...s.options].some((o) => o.value === chosen[s.dataset.activity])) s.value = chosen[s.dataset.activity];
    });
    editing();
  }

  function activityDetails(a) {
    const facts = [
      a.starts_at ? `starts ${when(a.starts_at)}` : null,
      a.starts_at ? `${a.duration_minutes} min` : null,
      a.capacity ? `capacity ${a.capacity}` : null,
      a.waitlist ? "waitlist" : null,
      a.status === "cancelled" ? "cancelled" : null,
    ];
    const places = a.places_left === null || a.places_left === undefined ? null : `${a.places_left} places left`;
    return [
      el("span", { class: "name", "data-testid": "activity-title-text", text: a.title }),
      el("span", { class: "muted", text: facts.filter(Boolean).join(" · ") }),
      places ? el("span", { class: "badge places", "data-testid": "activity-places-left", text: places }) : null,
      a.description ? el("div", { class: "description", text: a.description }) : null,
    ];
  }

  // ---------------------------------------------------------------- scheduling (edit, withdraw, calendar)

  // A datetime-local value (the browser's time zone) for an ISO instant, and back to one with
  // an explicit offset (the API refuses a start without one).
  function localInput(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }
  const instant = (local) => (local ? new Date(local).toISOString() : null);

  function editForm(a) {
    const field = (name, attrs) => el("input", { "data-testid": `activity-edit-${name}`, id: `activity-edit-${name}-${a.id}`, ...attrs });
    const title = field("title", { value: a.title, required: true, maxlength: 200, "aria-label": "Title" });
    const starts = field("starts", { type: "datetime-local", value: localInput(a.starts_at), "aria-label": "Starts" });
    const duration = field("duration", { type: "number", min: 5, max: 1440, value: a.duration_minutes, "aria-label": "Minutes" });
    const capacity = field("capacity", { type: "number", min: 1, value: a.capacity ?? "", "aria-label": "Capacity" });
    const waitlist = field("waitlist", { type: "checkbox", "aria-label": "Waitlist" });
    waitlist.checked = a.waitlist;
    const save = (ev) => {
      ev.preventDefault();
      const body = {
        title: title.value,
        starts_at: instant(starts.value),
        duration_minutes: Number(duration.value),
        capacity: capacity.value ? Number(capacity.value) : null,
        waitlist: waitlist.checked,
      };
      return act(ev.submitter, () => api("PATCH", `/api/activities/${a.id}`, body), "activities");
    };
    const form = el(
      "form",
      { class: "inline edit", "data-testid": "activity-edit-form", id: `activity-edit-form-${a.id}` },
      title, starts, el("label", {}, duration, " min"), el("label", {}, "cap ", capacity),
      el("label", {}, waitlist, " waitlist"),
      el("button", { type: "submit", "data-testid": "activity-edit-submit", id: `activity-edit-submit-${a.id}`, text: "Save" }),
    );
    form.addEventListener("submit", save);
    return el("details", { "data-testid": "activity-edit" }, el("summary", { text: "Edit" }), form);
  }

  // An edit form that is open stays open, with what was typed, when the list re-renders
  // (every notification reloads it).
  function keepEdits() {
    const open = [...document.querySelectorAll('[data-testid="activity-edit"][open]')].map((d) => {
      const fields = [...d.querySelectorAll("input")].map((i) => [i.id, i.type === "checkbox" ? i.checked : i.value]);
      return [d.closest("li").id, fields];
    });
    return () => {
      for (const [itemId, fields] of open) {
        const details = document.querySelector(`#${itemId} [data-testid="activity-edit"]`);
        if (!details) continue;
        details.open = true;
        for (const [id, value] of fields) {
          const input = $(id);
          if (input && input.type === "checkbox") input.checked = value;
          else if (input) input.value = value;
        }
      }
    };
  }

  function withdrawButton(inv) {
    const withdraw = (ev) =>
      act(ev.target, () => api("POST", "/api/activities/respond", { invite_id: inv.id, action: "withdraw" }), "activities");
    return button("Withdraw", "invite-withdraw", `invite-withdraw-${inv.id}`, withdraw);
  }

  async function subscribeCalendar(ev) {
    await act(ev.target, async () => {
      const { url } = await api("POST", "/api/calendar/feed");
      const link = $("calendar-link");
      link.href = url.replace(/^https?:/, "webcal:");
      link.textContent = url;
      link.hidden = false;
      $("calendar-note").hidden = false;
    });
  }

  function activityItem(a) {
    const counts = `${a.invites.pending} pending · ${a.invites.accepted} accepted · ${a.invites.declined} declined`;
    const select = el(
      "select",
      { "data-testid": "activity-invite-client", id: `activity-invite-client-${a.id}`, "data-activity": a.id, "aria-label": "Client" },
      el("option", { value: "", text: "Invite a connected client…" }),
      ...connectedClients().map((c) => el("option", { value: c.id, text: `${c.name} (${c.email})` })),
    );
    const invite = (ev) => {
      if (!select.value) return showError(new Error("Choose a connected client to invite."));
      const body = { activity_id: a.id, client_id: Number(select.value) };
      return act(ev.target, async () => {
        await api("POST", "/api/activities/invite", body);
        select.value = "";
      }, "activities");
    };
    const remove = (ev) => act(ev.target, () => api("DELETE", `/api/activities/${a.id}`), "activities");
    return el(
      "li",
      { id: `activity-${a.id}`, "data-testid": "activity", "data-id": a.id },
      ...activityDetails(a),
      el("div", { class: "muted", "data-testid": "activity-counts", text: counts }),
      el(
        "div",
        { class: "actions invite-row" },
        select,
        button("Invite", "activity-invite-submit", `activity-invite-submit-${a.id}`, invite, "primary"),
        button("Delete", "activity-delete", `activity-delete-${a.id}`, remove),
      ),
      editForm(a),
    );
  }

  function inviteItem(inv) {
    const actions = el("div", { class: "actions" });
    if (inv.status === "pending") {
      const respond = (action) => (ev) =>
        act(ev.target, () => api("POST", "/api/activities/respond", { invite_id: inv.id, action }), "activities");
      actions.append(
        button("Accept", "invite-accept", `invite-accept-${inv.id}`, respond("accept"), "primary"),
        button("Decline", "invite-decline", `invite-decline-${inv.id}`, respond("decline")),
      );
    }
    if (inv.status === "accepted" || inv.status === "waitlisted") actions.append(withdrawButton(inv));
    const position = inv.status === "waitlisted" && inv.waitlist_position
      ? el("span", { class: "badge waitlisted", "data-testid": "invite-waitlist-position", text: `#${inv.waitlist_position} on the waitlist` })
      : null;
    return el(
      "li",
      { id: `invite-${inv.id}`, "data-testid": "invite", "data-id": inv.id, "data-status": inv.status },
      ...activityDetails(inv.activity),
      el("span", { class: `badge ${inv.status}`, "data-testid": "invite-status", text: inv.status }),
      position,
      actions,
    );
  }

  // ---------------------------------------------------------------- account: MFA and sessions

  function renderSecurity() {
    const on = Boolean(user.mfa_enabled);
    const status = $("mfa-status");
    status.textContent = on ? "on" : "off";
    status.className = `badge ${on ? "accepted" : "pending"}`;
    $("mfa-enrol-form").hidden = on;
    $("mfa-disable-form").hidden = !on;
    if (on) $("mfa-setup").hidden = true;
  }

  function setMfa(on) {
    user = { ...user, mfa_enabled: on };
    store.setItem(KEY.user, JSON.stringify(user));
    renderSecurity();
  }

  function clearAccount() {
    $("mfa-setup").hidden = true;
    $("mfa-recovery").hidden = true;
    $("mfa-qr").removeAttribute("src");
    ["mfa-secret", "mfa-recovery-codes", "sessions"].forEach((id) => $(id).replaceChildren());
  }

  function renderSessions(list) {
    const items = list.map((s) => {
      const end = (ev) =>
        act(ev.target, async () => {
          await api("DELETE", `/api/auth/sessions/${encodeURIComponent(s.id)}`);
          if (s.current) endSession(); // that was this page's own session
        }, "sessions");
      return el(
        "li",
        { "data-testid": "session", "data-id": s.id, "data-current": s.current ? "true" : "false" },
        el("span", { class: "name", text: s.user_agent || "Unknown device" }),
        s.current ? el("span", { class: "badge accepted", "data-testid": "session-current", text: "this session" }) : null,
        el("div", { class: "muted", text: `${s.ip || "unknown address"} · signed in ${when(s.created_at)} · last active ${when(s.last_used_at)}` }),
        el("span", { class: "actions" }, button(s.current ? "Log out here" : "End", "session-end", `session-end-${s.id}`, end)),
      );
    });
    $("sessions").replaceChildren(...(items.length ? items : [empty("No sessions.")]));
  }

  $("sessions-reload").addEventListener("click", () => reload("sessions"));

  $("mfa-enrol-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const password = $("mfa-enrol-password").value;
    act($("mfa-enrol-submit"), async () => {
      const enrolment = await api("POST", "/api/auth/mfa/totp", { password });
      ev.target.reset();
      $("mfa-qr").src = enrolment.qr_code; // an SVG in a data: URI, rendered by the server
      $("mfa-secret").textContent = enrolment.secret;
      $("mfa-recovery").hidden = true;
      $("mfa-setup").hidden = false;
      $("mfa-confirm-code").focus();
    });
  });

  $("mfa-confirm-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const code = $("mfa-confirm-code").value.trim();
    act($("mfa-confirm-submit"), async () => {
      const { recovery_codes: codes } = await api("POST", "/api/auth/mfa/totp/confirm", { code });
      ev.target.reset();
      $("mfa-qr").removeAttribute("src");
      $("mfa-secret").replaceChildren();
      $("mfa-recovery-codes").replaceChildren(...codes.map((c) => el("li", { "data-testid": "mfa-recovery-code", text: c })));
      $("mfa-recovery").hidden = false;
      setMfa(true);
    });
  });

  $("mfa-disable-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const code = $("mfa-disable-code").value.trim();
    act($("mfa-disable-submit"), async () => {
      await api("DELETE", "/api/auth/mfa/totp", { code });
      ev.target.reset();
      $("mfa-recovery").hidden = true;
      setMfa(false);
    });
  });

  // ---------------------------------------------------------------- live notifications

  const sinceKey = () => `hc.since.${user.id}`;

  function idParts(id) {
    const [ms, s] = String(id).split("-");
    return [BigInt(ms || 0), BigInt(s || 0)];
  }

  function newer(a, b) {
    const [am, as] = idParts(a);
    const [bm, bs] = idParts(b);
    return am > bm || (am === bm && as > bs);
  }

  function describe(msg) {
    const d = msg.data || {};
    const c = d.connection;
    const title = (d.invite && d.invite.activity.title) || (d.activity && d.activity.title) || "";
    const other = c ? (user.role === "client" ? c.professional : c.client) : null;
    const who = other ? other.name || other.email : "";
    const client = d.invite ? clientName(d.invite.client_id) : "";
    const texts = {
      "connection.requested": `${who} asked to connect`,
      "connection.invited": `${who} invited you to connect`,
      "connection.accepted": `${who} accepted the connection`,
      "connection.rejected": `${who} rejected the connection`,
      "connection.removed": `${who} removed the connection`,
      "activity.invited": `Invited to “${title}”`,
      "activity.invite_accepted": `${client} accepted “${title}”`,
      "activity.invite_declined": `${client} declined “${title}”`,
      "activity.cancelled": `“${title}” was cancelled`,
      "activity.invite_cancelled": `Invitation to “${title}” cancelled`,
      "activity.updated": `“${title}” was changed${d.activity && d.activity.starts_at ? `: starts ${when(d.activity.starts_at)}` : ""}`,
      "activity.invite_withdrawn": `${client} withdrew from “${title}”`,
      "activity.invite_promoted": user.role === "client" ? `A place freed: you are in “${title}”` : `${client} got a place in “${title}”`,
      "activity.reminder": `Reminder: “${title}” starts ${d.activity ? when(d.activity.starts_at) : "soon"}`,
      reset: "Some notifications were no longer held: lists reloaded",
    };
    return texts[msg.type] || msg.type;
  }

  function addToFeed(msg) {
    const item = el(
      "li",
      { "data-testid": "notification", "data-type": msg.type, "data-id": msg.id || "" },
      el("time", { datetime: msg.occurred_at, text: new Date(msg.occurred_at).toLocaleTimeString() }),
      el("span", { class: "type", "data-testid": "notification-type", text: msg.type }),
      el("span", { class: "text", "data-testid": "notification-text", text: describe(msg) }),
    );
    const feed = $("feed");
    feed.querySelector(".empty")?.remove();
    feed.prepend(item);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  function onMessage(event) {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    if (msg.type === "reset") {
      addToFeed({ ...msg, id: "", occurred_at: new Date().toISOString() });
      reload("connections", "activities");
      return;
    }
    const last = store.getItem(sinceKey());
    if (!msg.id || (last && !newer(msg.id, last))) return; // already seen
    store.setItem(sinceKey(), msg.id);
    addToFeed(msg);
    if (msg.type.startsWith("connection.")) reload("connections");
    if (msg.type.startsWith("activity.") || msg.type === "connection.removed") reload("activities");
  }

  function setState(state, text) {
    const badge = $("ws-state");
    badge.dataset.state = state;
    badge.textContent = text || state;
  }

  // The newest id in the caller's log, so that the first socket can ask for everything after it.
  async function baseline() {
    let since = "0";
    for (;;) {
      const page = await api("GET", `/api/notifications?limit=200&since=${encodeURIComponent(since)}`);
      if (page.length) since = page[page.length - 1].id;
      if (page.length < 200) return since;
    }
  }

  async function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (!user || socket || connecting) return;
    connecting = true;
    try {
      // A failed upgrade tells the page nothing, so check (and refresh) the token over REST first.
      await api("GET", "/api/auth/me");
      if (user && !store.getItem(sinceKey())) store.setItem(sinceKey(), await baseline());
    } catch (err) {
      connecting = false;
      if (user) scheduleReconnect();
      return;
    }
    connecting = false;
    if (!user || socket) return;
    const since = store.getItem(sinceKey());
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/ws?since=${encodeURIComponent(since)}`;
    const ws = new WebSocket(url, ["bearer", store.getItem(KEY.token)]);
    socket = ws;
    ws.onopen = () => {
      attempt = 0;
      setState("connected");
      reload("connections", "activities", "professionals");
    };
    ws.onmessage = onMessage;
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      if (user) scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    const delay = Math.min(10000, 500 * 2 ** attempt) * (0.8 + Math.random() * 0.4);
    attempt += 1;
    setState("reconnecting", `reconnecting (try ${attempt})…`);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, delay);
  }

  function dropSocket() {
    const ws = socket;
    socket = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(1000, "bye");
    } catch {
      // already closed
    }
  }

  window.addEventListener("offline", () => {
    if (!user) return;
    dropSocket(); // its close handshake may hang while offline: stop listening to it now
    clearTimeout(retryTimer);
    setState("reconnecting", "offline, waiting for the network…");
  });

  window.addEventListener("online", () => {
    if (!user) return;
    attempt = 0;
    connect();
  });

  // ---------------------------------------------------------------- session

  function saveSession(auth) {
    store.setItem(KEY.token, auth.token);
    store.setItem(KEY.refresh, auth.refresh_token);
    store.setItem(KEY.user, JSON.stringify(auth.user));
    user = auth.user;
  }

  function endSession() {
    if (user) store.removeItem(sinceKey());
    Object.values(KEY).forEach((k) => store.removeItem(k));
    user = null;
    dropSocket();
    clearTimeout(retryTimer);
    setState("offline");
    $("app-view").hidden = true;
    $("session").hidden = true;
    $("auth-view").hidden = false;
    ["connections", "activities", "feed", "request-pro"].forEach((id) => $(id).replaceChildren());
    $("mailbox-filter").value = "";
    loadMailbox();
    clearAccount();
  }

  function startApp() {
    document.body.dataset.role = user.role;
    $("whoami").textContent = `${user.name} · ${user.email} · ${user.role}`;
    renderAccount();
    if (!$("mailbox-filter").value) $("mailbox-filter").value = user.email;
    loadMailbox();
    $("auth-view").hidden = true;
    $("session").hidden = false;
    $("app-view").hidden = false;
    $("feed").replaceChildren(empty("Nothing yet: notifications appear here as they happen."));
    connections = [];
    activities = [];
    renderSecurity();
    reload("connections", "activities", "professionals", "sessions");
    connect();
  }

  async function signIn(path, body, form) {
    const ok = await act(form.querySelector("button"), async () => saveSession(await api("POST", path, body)));
    if (ok) {
      form.reset();
      startApp();
    }
  }

  $("signup-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = {
      name: $("signup-name").value,
      email: $("signup-email").value,
      password: $("signup-password").value,
      role: $("signup-role").value,
    };
    signIn("/api/auth/signup", body, ev.target);
  });

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { email: $("login-email").value, password: $("login-password").value };
    const otp = $("login-otp").value.trim();
    if (!$("login-otp-row").hidden && otp) body.otp = otp;
    clearError();
    $("login-submit").disabled = true;
    try {
      saveSession(await api("POST", "/api/auth/login", body));
    } catch (err) {
      if (err.code === "mfa_required") {
        // The password was right: ask for the second factor and send both again.
        $("login-otp-row").hidden = false;
        $("login-otp").focus();
        showError(new Error("This account has two-factor authentication: enter the code from your authenticator app, or a recovery code."));
      } else {
        showError(err);
      }
      return;
    } finally {
      $("login-submit").disabled = false;
    }
    ev.target.reset();
    $("login-otp-row").hidden = true;
    startApp();
  });

  $("logout").addEventListener("click", async (ev) => {
    ev.target.disabled = true;
    try {
      await api("POST", "/api/auth/logout", { refresh_token: store.getItem(KEY.refresh) });
    } catch {
      // the session is ended locally either way
    }
    ev.target.disabled = false;
    clearError();
    endSession();
  });

  $("error-close").addEventListener("click", clearError);

  $("request-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = Number($("request-pro").value);
    if (!id) return showError(new Error("Choose a professional first."));
    act($("request-submit"), () => api("POST", "/api/connection/request-pro", { professional_id: id }), "connections");
  });
  $("request-pro").addEventListener("focus", () => reload("professionals"));

  $("invite-client-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { client_email: $("invite-client-email").value };
    if (await act($("invite-client-submit"), () => api("POST", "/api/connection/invite-client", body), "connections")) {
      ev.target.reset();
    }
  });

  $("activity-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { title: $("activity-title").value, description: $("activity-description").value };
    if ($("activity-starts").value) body.starts_at = new Date($("activity-starts").value).toISOString();
    if ($("activity-capacity").value) body.capacity = Number($("activity-capacity").value);
    if ($("activity-duration").value) body.duration_minutes = Number($("activity-duration").value);
    body.waitlist = $("activity-waitlist").checked;
    if (await act($("activity-submit"), () => api("POST", "/api/activities/", body), "activities")) {
      ev.target.reset();
    }
  });

  // ---------------------------------------------------------------- account (version 3: mail)

  function renderAccount() {
    if (!user) return;
    const verified = Boolean(user.email_verified);
    const badge = $("verify-status");
    badge.textContent = verified ? `${user.email} · verified` : `${user.email} · not verified`;
    badge.className = `badge ${verified ? "verified" : "unverified"}`;
    badge.dataset.verified = String(verified);
    $("verify-box").hidden = verified;
  }

  function setUser(fresh) {
    user = fresh;
    store.setItem(KEY.user, JSON.stringify(fresh));
    renderAccount();
  }

  async function verifyEmail(token, control) {
    return act(control, async () => {
      const verified = await api("POST", "/api/auth/verify-email", { token });
      if (user && verified.id === user.id) setUser(verified);
      showNotice(`${verified.email} is verified.`);
      $("verify-code").value = "";
    }, ...(user ? ["connections"] : []));
  }

  // Links in the mails: `#verify=<token>`, `#reset=<token>`, `#signup=<address>`. Read
  // from the fragment, which never reaches a server, then cleared from the address bar.
  let resetToken = null;
  function handleHash() {
    const match = /^#(verify|reset|signup)=(.+)$/.exec(location.hash);
    if (!match) return;
    history.replaceState(null, "", location.pathname + location.search);
    const [, kind, raw] = match;
    let value;
    try {
      value = decodeURIComponent(raw);
    } catch {
      return showError(new Error("This link is damaged."));
    }
    if (kind === "verify") verifyEmail(value, null);
    if (kind === "signup" && !user) {
      $("signup-email").value = value;
      $("signup-role").value = "client";
      $("signup-name").focus();
    }
    if (kind === "reset") {
      resetToken = value;
      if (user) endSession(); // the new password ends every session anyway
      $("reset-panel").hidden = false;
      $("reset-password").focus();
    }
  }
  window.addEventListener("hashchange", handleHash);

  $("verify-submit").addEventListener("click", (ev) => {
    const code = $("verify-code").value.trim();
    if (!code) return showError(new Error("Paste the code from the verification mail."));
    verifyEmail(code, ev.target);
  });

  $("verify-resend").addEventListener("click", (ev) =>
    act(ev.target, async () => {
      await api("POST", "/api/auth/verify-email/resend");
      showNotice(`A new verification mail is on its way to ${user.email}.`);
    }),
  );

  $("forgot-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const email = $("forgot-email").value;
    if (await act($("forgot-submit"), () => api("POST", "/api/auth/password-reset", { email }))) {
      showNotice(`If an account has the address ${email}, a reset link is on its way to it.`);
      if (!$("mailbox-filter").value) $("mailbox-filter").value = email;
      ev.target.reset();
      loadMailbox();
    }
  });

  $("reset-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!resetToken) return showError(new Error("Open the link from the reset mail first."));
    const body = { token: resetToken, password: $("reset-password").value };
    if (await act($("reset-submit"), () => api("POST", "/api/auth/password-reset/confirm", body))) {
      resetToken = null;
      ev.target.reset();
      $("reset-panel").hidden = true;
      showNotice("Your password is changed, and every session was ended: log in with the new one.");
    }
  });

  $("change-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { current_password: $("change-current").value, new_password: $("change-new").value };
    if (await act($("change-submit"), () => api("POST", "/api/auth/password", body))) {
      ev.target.reset();
      showNotice("Your password is changed; your other sessions were ended.");
    }
  });

  $("notice-close").addEventListener("click", () => {
    $("notice").hidden = true;
  });

  // ---------------------------------------------------------------- mailbox (development)

  let mailboxOn = false;
  let mailboxTimer = null;

  async function startMailbox() {
    try {
      const resp = await fetch("/dev/mail?to=-");
      mailboxOn = resp.ok;
    } catch {
      mailboxOn = false;
    }
    $("mailbox-panel").hidden = !mailboxOn;
    if (mailboxOn) mailboxTimer = setInterval(loadMailbox, 2000);
  }

  async function loadMailbox() {
    if (!mailboxOn) return;
    const to = $("mailbox-filter").value.trim();
    let list = [];
    try {
      const resp = await fetch(`/dev/mail${to ? `?to=${encodeURIComponent(to)}` : ""}`);
      if (resp.ok) list = await resp.json();
    } catch {
      return; // the next poll tries again
    }
    const items = list.map((m) =>
      el(
        "li",
        { "data-testid": "mail-item", "data-id": m.id, onclick: () => openMail(m.id) },
        el("span", { class: "name", "data-testid": "mail-item-subject", text: m.subject }),
        el("span", { class: "muted", text: `to ${m.to}` }),
        el("span", { class: "muted", text: m.date }),
      ),
    );
    $("mailbox-list").replaceChildren(...(items.length ? items : [empty("No mail yet.")]));
  }

  async function openMail(id) {
    const resp = await fetch(`/dev/mail/${encodeURIComponent(id)}`);
    if (!resp.ok) return showError(new Error("That message is gone."));
    const mail = await resp.json();
    $("mail-subject").textContent = mail.subject;
    $("mail-meta").textContent = `from ${mail.from} to ${mail.to}, ${mail.date}`;
    $("mail-text").textContent = mail.text; // text only: the HTML body is never rendered here
    const links = [...new Set(mail.text.match(/https?:\/\/\S+/g) || [])];
    $("mail-links").replaceChildren(
      ...links.map((href) => {
        const link = el("a", { href, "data-testid": "mail-link", text: href });
        link.addEventListener("click", (ev) => {
          // A link of this page (whatever PUBLIC_URL says): follow its fragment here.
          const hash = new URL(href).hash;
          if (/^#(verify|reset|signup)=/.test(hash)) {
            ev.preventDefault();
            location.hash = hash;
          }
        });
        return link;
      }),
    );
    $("mail-view").hidden = false;
  }

  $("mailbox-refresh").addEventListener("click", loadMailbox);
  $("mailbox-filter").addEventListener("change", loadMailbox);
  $("calendar-subscribe").addEventListener("click", subscribeCalendar);

  // ---------------------------------------------------------------- start

  async function boot() {
    await startMailbox();
    const saved = store.getItem(KEY.user);
    if (!store.getItem(KEY.token) || !saved) {
      endSession();
      return handleHash();
    }
    user = JSON.parse(saved);
    try {
      saveSession({ token: store.getItem(KEY.token), refresh_token: store.getItem(KEY.refresh), user: await api("GET", "/api/auth/me") });
    } catch (err) {
      if (!user) return; // the tokens were dead: endSession already showed the sign-in forms
      showError(err);
    }
    startApp();
    handleHash();
  }

  boot();
})();
