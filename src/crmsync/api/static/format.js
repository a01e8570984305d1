// Small formatting helpers and a tiny DOM builder (no innerHTML with data).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function num(v) {
  if (v === undefined || v === null) return "–";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return "∞";
  return v.toLocaleString("en-US", { maximumFractionDigits: v < 10 ? 1 : 0 });
}

export function rate(v) {
  if (v === undefined || v === null) return "–";
  return `${num(v)}/s`;
}

// Milliseconds as a short duration: 850 ms, 2.5 s, 3 min, 2 h.
export function ms(v) {
  if (v === undefined || v === null) return "–";
  if (!Number.isFinite(v)) return "> 1 h";
  if (v < 1000) return `${Math.round(v)} ms`;
  return seconds(v / 1000);
}

export function seconds(v) {
  if (v === undefined || v === null) return "–";
  if (v < 60) return `${Number(v.toFixed(1))} s`;
  if (v < 3600) return `${Math.round(v / 60)} min`;
  return `${Number((v / 3600).toFixed(1))} h`;
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

// A rate window as people write it: 100/s, 100/10s, 5000/day.
export function windowText(w) {
  const s = w.window_ms / 1000;
  const unit = s === 1 ? "s" : s === 60 ? "min" : s === 3600 ? "h" : s === 86400 ? "day" : `${s}s`;
  return `${num(w.limit)}/${unit}`;
}

// What a connection is doing, named for an operator: the breaker as "breaker".
export function stateOf(c) {
  const queued = queuedOf(c);
  if (c.paused) return { label: "paused", cls: "bad", reason: c.paused_reason };
  if (c.breaker === "open") return { label: "breaker open", cls: "bad", reason: "the CRM failed repeatedly; sends wait for a probe" };
  if (c.breaker === "half_open") return { label: "breaker half-open", cls: "warn", reason: "one probe request is testing the CRM" };
  if (c.blocked_for_s > 0) return { label: `blocked ${num(c.blocked_for_s)} s`, cls: "warn", reason: `until ${c.blocked_until || "later"}: ${c.blocked_reason || "the CRM asked to wait"}` };
  if (c.redis_unknown) return { label: "unknown", cls: "warn", reason: "Redis is unreachable" };
  if (queued > 0) return { label: "sending", cls: "" };
  return { label: "idle", cls: "idle" };
}

export function queuedOf(c) {
  const q = c.queue || {};
  return (q.ready || 0) + (q.leased || 0) + (q.delayed || 0) + (q.requeue || 0);
}

// The rate per second drawn against the sends: the tightest window of up to a
// minute (a daily budget shows as its share used), else the tightest (timeseries.py).
export function limitPerSecond(limits) {
  const all = (limits || []).filter((w) => w.window_ms > 0);
  const short = all.filter((w) => w.window_ms <= 60000);
  const rates = (short.length ? short : all).map((w) => (w.limit * 1000) / w.window_ms);
  return rates.length ? Math.min(...rates) : null;
}
