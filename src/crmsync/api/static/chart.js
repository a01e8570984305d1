// A small SVG line chart over the last minutes: one polyline per series, a
// dashed limit line, three value gridlines and the time span at the bottom.

const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function label(v) {
  return v >= 1000 ? `${Number((v / 1000).toFixed(1))}k` : `${Number(v.toFixed(v < 10 ? 1 : 0))}`;
}

// points: [{t, ...}] oldest first; lines: [{key, cls}] drawn in order.
export function lineChart({ points, lines, spanMs, now, width = 600, height = 150, title }) {
  const padL = 34, padR = 6, padT = 8, padB = 18;
  const w = width - padL - padR, hgt = height - padT - padB;
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": title || "chart",
  });
  const start = now - spanMs;
  const shown = points.filter((p) => p.t >= start);
  let max = 0;
  for (const p of shown) for (const l of lines) if (p[l.key] != null) max = Math.max(max, p[l.key]);
  max = niceMax(max * 1.05);
  const x = (t) => padL + ((t - start) / spanMs) * w;
  const y = (v) => padT + hgt - (Math.max(0, v) / max) * hgt;
  for (const f of [0, 0.5, 1]) {
    const yy = padT + hgt - f * hgt;
    svg.append(el("line", { x1: padL, x2: width - padR, y1: yy, y2: yy, class: "grid-line" }));
    svg.append(el("text", { x: padL - 4, y: yy + 3, "text-anchor": "end", class: "axis" }, label(f * max)));
  }
  const mins = Math.round(spanMs / 60000);
  svg.append(el("text", { x: padL, y: height - 4, class: "axis" }, `−${mins} min`));
  svg.append(el("text", { x: width - padR, y: height - 4, "text-anchor": "end", class: "axis" }, "now"));
  for (const l of lines) {
    const coords = [];
    for (const p of shown) {
      const v = p[l.key];
      if (v == null) continue;
      coords.push(`${x(p.t).toFixed(1)},${y(v).toFixed(1)}`);
    }
    if (coords.length) {
      svg.append(el("polyline", { points: coords.join(" "), class: l.cls, "data-series": l.key }));
    }
  }
  if (!shown.length) {
    svg.append(el("text", { x: padL + w / 2, y: padT + hgt / 2, "text-anchor": "middle", class: "axis" },
      "collecting samples…"));
  }
  svg.dataset.points = String(shown.length);
  svg.dataset.last = shown.length ? String(shown[shown.length - 1].t) : "0";
  return svg;
}
