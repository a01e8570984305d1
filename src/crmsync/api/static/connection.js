// One connection: its figures over time, limits and settings (no secrets),
// pause/resume, and its dead letters with their CRM error, replay and purge.

import { api } from "./api.js";
import { refreshSoon } from "./app.js";
import { lineChart } from "./chart.js";
import { h, num, stateOf, when, windowText } from "./format.js";
import { figureList, rateChart, stateBadge } from "./overview.js";

const SPAN_MS = 10 * 60 * 1000;

export function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

export class ConnectionView {
  constructor(id) {
    this.id = id;
    this.info = null; // the /v1/connections entry
    this.deadCount = null;
    this.selected = new Set();
  }

  mount(main) {
    this.message = h("p", { class: "note", role: "status", id: "action-message" });
    this.head = h("div", { id: "connection-head" });
    this.actions = h("div", { class: "toolbar", id: "connection-actions" });
    this.charts = h("div", { class: "two" });
    this.figures = h("div", { class: "card" });
    this.settings = h("div", { class: "card", id: "connection-settings" });
    this.dead = h("section", { id: "dead-letters" });
    main.append(h("section", { id: "connection", "data-connection": this.id },
      h("p", {}, h("a", { href: "#/", text: "← all connections" })),
      this.head, this.actions, this.message, this.figures, this.charts,
      h("h2", { text: "Limits and settings" }), this.settings,
      h("h2", { text: "Dead letters" }), this.dead));
    this.loadInfo();
  }

  async loadInfo() {
    try {
      const data = await api("/v1/connections");
      this.info = data.connections.find((c) => c.id === this.id) || null;
    } catch (err) {
      this.say(String(err.message || err), true);
    }
    this.renderSettings();
  }

  say(text, bad = false) {
    this.message.textContent = text;
    this.message.className = bad ? "error" : "note";
  }

  update(store) {
    const c = store.status.connections.find((x) => x.id === this.id);
    if (!c) {
      this.head.replaceChildren(h("h1", { text: this.id }), h("p", { class: "error", text: "No such connection (or not visible to this key)." }));
      return;
    }
    this.current = c;
    const s = stateOf({ ...c, redis_unknown: !c.queue });
    this.head.replaceChildren(
      ...[
        h("h1", {}, `${c.id} `, stateBadge({ ...c, redis_unknown: !c.queue })),
        h("p", { class: "note", text: `${c.crm} · tenant ${c.tenant}` }),
        s.reason ? h("p", { class: "reason", "data-field": "reason", text: s.reason }) : null,
      ].filter(Boolean));
    this.renderActions(c);
    const points = store.series[c.id] || [];
    this.figures.replaceChildren(figureList(c, points));
    const now = Date.now();
    this.charts.replaceChildren(
      h("div", { class: "card" }, h("h3", { text: "Requests per second against the limit" }),
        rateChart(c, points, { width: 420, height: 170 }),
        h("div", { class: "legend" }, h("span", { class: "sent", text: "sent/s" }), h("span", { class: "limit", text: "limit/s" }))),
      h("div", { class: "card" }, h("h3", { text: "Queued changes" }),
        lineChart({ points, lines: [{ key: "queued", cls: "queue" }], spanMs: SPAN_MS, now, width: 420, height: 170, title: "queued changes" }),
        h("div", { class: "legend" }, h("span", { class: "queue", text: "queued" }))),
      h("div", { class: "card" }, h("h3", { text: "429s, retries and dead letters per second" }),
        lineChart({
          points,
          lines: [{ key: "rate_limited", cls: "limit" }, { key: "retried", cls: "errors" }, { key: "dead", cls: "queue" }],
          spanMs: SPAN_MS, now, width: 420, height: 170, title: "errors per second",
        }),
        h("div", { class: "legend" }, h("span", { class: "limit", text: "429s" }), h("span", { class: "errors", text: "retries" }), h("span", { class: "queue", text: "dead letters" }))));
    this.renderSettings();
    if (c.dead_letters !== this.deadCount) {
      this.deadCount = c.dead_letters;
      this.loadDead();
    }
  }

  renderActions(c) {
    if (this.actions.dataset.paused === String(c.paused)) return; // keep what is typed
    this.actions.dataset.paused = String(c.paused);
    if (c.paused) {
      this.actions.replaceChildren(h("button", {
        type: "button", id: "resume",
        onclick: () => this.act(`/v1/connections/${encodeURIComponent(this.id)}/resume`, {}, "Resumed: sending again."),
      }, "Resume"));
    } else {
      const reason = h("input", { id: "pause-reason", placeholder: "reason (shown to everyone)", maxlength: "500", "aria-label": "pause reason" });
      this.actions.replaceChildren(reason, h("button", {
        type: "button", id: "pause", class: "danger",
        onclick: () => this.act(`/v1/connections/${encodeURIComponent(this.id)}/pause`,
          reason.value.trim() ? { reason: reason.value.trim() } : {}, "Paused: changes keep queueing until resumed."),
      }, "Pause"));
    }
  }

  async act(path, body, done) {
    try {
      await api(path, { method: "POST", body });
      this.say(done);
      this.actions.dataset.paused = "";
      refreshSoon();
    } catch (err) {
      this.say(String(err.message || err), true);
    }
  }

  renderSettings() {
    const c = this.current;
    const info = this.info;
    if (!info) {
      this.settings.replaceChildren(h("p", { class: "note", text: "loading…" }));
      return;
    }
    const used = new Map(((c && c.limits) || []).map((w) => [w.window_ms, w.used]));
    const rows = [
      ["CRM", info.crm],
      ["account", info.account],
      ["tenant", info.tenant],
      ["base URL", info.base_url],
      ["rate limits", (info.rate_limits || []).map((w) =>
        `${windowText(w)}${used.has(w.window_ms) ? ` (${num(used.get(w.window_ms))} used in the current window)` : ""}`).join("; ") || "none"],
      ["settings", Object.keys(info.settings || {}).length
        ? Object.entries(info.settings).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ") : "defaults"],
      ["added", when(info.created_at)],
    ];
    this.settings.replaceChildren(h("dl", { class: "kv" }, rows.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]).flat()));
  }

  async loadDead() {
    let data;
    try {
      data = await api(`/v1/dead-letters?connection=${encodeURIComponent(this.id)}&limit=200`);
    } catch (err) {
      this.dead.replaceChildren(h("p", { class: "error", text: String(err.message || err) }));
      return;
    }
    const letters = data.dead_letters;
    this.selected = new Set([...this.selected].filter((id) => letters.some((d) => d.id === id)));
    if (!letters.length) {
      this.dead.replaceChildren(h("p", { class: "note", id: "no-dead-letters", text: "No dead letters." }));
      return;
    }
    const rows = letters.map((d) => h("tr", { "data-dead-letter": String(d.id) },
      h("td", { "data-label": "select" }, h("input", {
        type: "checkbox", "aria-label": `select dead letter ${d.id}`, checked: this.selected.has(d.id),
        onchange: (ev) => (ev.target.checked ? this.selected.add(d.id) : this.selected.delete(d.id)),
      })),
      h("td", { "data-label": "contact" }, h("a", { href: `#/contact/${encodeURIComponent(d.contact_id)}`, class: "mono", text: d.contact_id })),
      h("td", { "data-label": "operation", text: d.operation }),
      h("td", { class: "err", "data-label": "CRM error", text: `${d.http_status ? `${d.http_status} ` : ""}${d.error_code ? `${d.error_code}: ` : ""}${d.error}` }),
      h("td", { class: "num", "data-label": "attempts", text: num(d.attempts) }),
      h("td", { "data-label": "when", text: when(d.created_at) })));
    const base = { connection: this.id };
    const chosen = () => ({ ...base, ids: [...this.selected] });
    const needSelection = (fn) => () => (this.selected.size ? fn() : this.say("Select dead letters first.", true));
    this.dead.replaceChildren(
      h("div", { class: "toolbar" },
        h("button", { type: "button", id: "replay-selected", onclick: needSelection(() => this.dlq("replay", chosen(), `Replay ${this.selected.size} dead letter(s)? Each contact's current state is synced again.`)) }, "Replay selected"),
        h("button", { type: "button", id: "replay-all", class: "quiet", onclick: () => this.dlq("replay", base, `Replay all ${data.total} dead letter(s) of ${this.id}?`) }, "Replay all"),
        h("button", { type: "button", id: "purge-selected", class: "danger", onclick: needSelection(() => this.dlq("purge", chosen(), `Purge ${this.selected.size} dead letter(s)? They are forgotten; the contacts stay as they are in the CRM.`)) }, "Purge selected"),
        h("button", { type: "button", id: "purge-all", class: "danger", onclick: () => this.dlq("purge", base, `Purge all ${data.total} dead letter(s) of ${this.id}? This cannot be undone.`) }, "Purge all"),
        h("span", { class: "note", text: `${num(data.total)} in all${data.total > letters.length ? `, the oldest ${letters.length} shown` : ""}` })),
      h("div", { class: "table-wrap" }, h("table", { class: "stack" },
        h("thead", {}, h("tr", {}, ["", "contact", "operation", "CRM error", "attempts", "when"].map((t) => h("th", { text: t })))),
        h("tbody", {}, rows))));
  }

  async dlq(verb, body, question) {
    if (!(await confirmAction(question))) return;
    try {
      const res = await api(`/v1/dead-letters/${verb}`, { method: "POST", body });
      this.say(verb === "replay" ? `Replayed ${res.replayed}: queued again.` : `Purged ${res.purged}.`);
      this.selected.clear();
      this.deadCount = null;
      await this.loadDead();
      refreshSoon();
    } catch (err) {
      this.say(String(err.message || err), true);
    }
  }
}
