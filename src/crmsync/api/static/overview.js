// Overview: every connection as a card with its state, its sends per second
// against its limit over the last minutes, and the figures an operator watches.

import { lineChart } from "./chart.js";
import { h, limitPerSecond, ms, num, queuedOf, rate, seconds, stateOf, windowText } from "./format.js";

const SPAN_MS = 10 * 60 * 1000;

export function figures(c, points) {
  const last = points.length ? points[points.length - 1] : null;
  const cnt = c.counters || {};
  const lag = c.sync_lag_ms || {};
  const limit = limitPerSecond(c.limits) ?? (last ? last.limit : null);
  return [
    ["sent", "sent/s", last ? rate(last.sent) : "–"],
    ["limit", "limit", (c.limits || []).map(windowText).join(", ") || (limit ? rate(limit) : "none")],
    ["queued", "queued", num(queuedOf(c))],
    ["oldest", "oldest", c.oldest_age_s == null ? "–" : seconds(c.oldest_age_s)],
    ["lag_p50", "lag p50", ms(lag.p50)],
    ["lag_p99", "lag p99", ms(lag.p99)],
    ["rate_limited", "429s", num(cnt.crm_rate_limited || 0)],
    ["retried", "retries", num(cnt.retried || 0)],
    ["dead_letters", "dead letters", num(c.dead_letters), c.dead_letters > 0 ? "bad" : ""],
    ["synced", "synced", num((c.sync || {}).synced || 0)],
    ["requests", "requests", num(cnt.requests || 0)],
  ];
}

export function figureList(c, points) {
  return h("dl", { class: "figures" },
    figures(c, points).map(([key, name, value, cls]) =>
      h("div", {}, h("dt", { text: name }), h("dd", { class: cls || null, "data-field": key, text: value }))));
}

export function stateBadge(c) {
  const s = stateOf(c);
  return h("span", { class: `state ${s.cls}`, "data-field": "state", title: s.reason || "" }, s.label);
}

export function rateChart(c, points, opts = {}) {
  const limit = limitPerSecond(c.limits);
  const pts = limit == null ? points : points.map((p) => ({ ...p, limit: p.limit ?? limit }));
  return lineChart({
    points: pts,
    lines: [{ key: "limit", cls: "limit" }, { key: "sent", cls: "sent" }],
    spanMs: SPAN_MS,
    now: Date.now(),
    title: `requests per second of ${c.id} against its limit`,
    ...opts,
  });
}

export class OverviewView {
  mount(main) {
    this.root = h("section", { id: "overview" });
    main.append(this.root);
  }

  update(store) {
    const st = store.status;
    const totals = st.totals || {};
    const cards = st.connections.map((c) => {
      const points = store.series[c.id] || [];
      const s = stateOf({ ...c, redis_unknown: !c.queue });
      return h("article", { class: "card", "data-connection": c.id },
        h("header", {},
          h("h3", {}, h("a", { href: `#/connection/${encodeURIComponent(c.id)}`, text: c.id })),
          h("span", { class: "crm", text: c.crm }),
          stateBadge({ ...c, redis_unknown: !c.queue })),
        s.reason && c.paused ? h("p", { class: "reason", "data-field": "reason", text: s.reason }) : null,
        rateChart(c, points, { width: 360, height: 120 }),
        h("div", { class: "legend" }, h("span", { class: "sent", text: "sent/s" }), h("span", { class: "limit", text: "limit/s" })),
        figureList(c, points));
    });
    this.root.replaceChildren(...[
      h("h1", { text: "Connections" }),
      st.redis_error ? h("p", { class: "banner", role: "alert", text: `Redis unreachable: ${st.redis_error}` }) : null,
      h("p", { class: "totals" },
        h("span", {}, "contacts ", h("b", { "data-total": "contacts", text: num(totals.contacts) })),
        h("span", {}, "outbox ", h("b", { "data-total": "outbox", text: num(totals.outbox) })),
        h("span", {}, "dead letters ", h("b", { "data-total": "dead_letters", text: num(totals.dead_letters) })),
        h("span", {}, "connections ", h("b", { text: num(st.connections.length) }))),
      st.connections.length ? h("div", { class: "grid" }, cards)
        : h("p", { class: "note", text: "No connections yet: add one with `crmsync connections add`." }),
    ].filter(Boolean));
  }
}
