// The dashboard: sign-in, a hash router and the polling loop that keeps every
// page live (status every 2 s, the per-second series every second).

import { api, AuthError, key, signIn, signOut, takeKeyFromAddress } from "./api.js";
import { h } from "./format.js";
import { OverviewView } from "./overview.js";
import { ConnectionView } from "./connection.js";
import { ContactView } from "./contact.js";

const STATUS_MS = 2000;
const SERIES_MS = 1000;
export const SPAN_MS = 10 * 60 * 1000; // what the API keeps: ten minutes

const main = document.getElementById("main");
const live = document.getElementById("live");
const nav = document.getElementById("nav");
const signoutButton = document.getElementById("signout");

// What every view reads: the last status report and each connection's points.
export const store = {
  status: null,
  series: {}, // connection id -> [{t, sent, records, limit, queued, ...}]
  lastT: 0,
  okAt: 0,
  error: null,
};

let view = null;
let timers = [];

function route() {
  const hash = location.hash || "#/";
  const parts = hash.slice(2).split("/");
  if (parts[0] === "connection" && parts[1]) return { name: "connection", arg: decodeURIComponent(parts[1]) };
  if (parts[0] === "contact") return { name: "contact", arg: parts[1] ? decodeURIComponent(parts.slice(1).join("/")) : "" };
  return { name: "overview" };
}

function show() {
  if (!key()) return showSignIn();
  nav.hidden = false;
  signoutButton.hidden = false;
  const r = route();
  for (const a of nav.querySelectorAll("a")) {
    const current = (r.name === "overview" && a.getAttribute("href") === "#/") ||
      (r.name === "contact" && a.getAttribute("href") === "#/contact");
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  main.replaceChildren();
  view = r.name === "connection" ? new ConnectionView(r.arg)
    : r.name === "contact" ? new ContactView(r.arg)
    : new OverviewView();
  view.mount(main);
  if (store.status) view.update(store);
  startPolling();
}

function showSignIn(message) {
  stopPolling();
  view = null;
  nav.hidden = true;
  signoutButton.hidden = true;
  live.dataset.state = "off";
  const input = h("input", {
    type: "password", name: "key", id: "key", autocomplete: "current-password",
    placeholder: "API key", required: true, "aria-label": "API key",
  });
  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      signIn(input.value);
      try {
        await api("/v1/status");
      } catch (err) {
        signOut();
        showSignIn(err instanceof AuthError ? "That key was refused." : String(err.message || err));
        return;
      }
      show();
    },
  },
  h("label", { for: "key", text: "Sign in with an API key (CRMSYNC_API_KEYS)" }),
  input,
  h("button", { type: "submit", id: "signin" }, "Sign in"),
  message ? h("p", { class: "error", role: "alert", text: message }) : null,
  h("p", { class: "note", text: "The key stays in this browser tab only, until you sign out or close it." }));
  main.replaceChildren(h("section", { class: "signin" }, h("h1", { text: "crmsync dashboard" }), form));
  input.focus();
}

async function pollStatus() {
  try {
    store.status = await api("/v1/status");
    store.okAt = Date.now();
    store.error = null;
  } catch (err) {
    if (err instanceof AuthError) {
      signOut();
      showSignIn("The API no longer accepts this key.");
      return;
    }
    store.error = String(err.message || err);
  }
  paint();
}

async function pollSeries() {
  try {
    const data = await api(`/v1/series?since=${store.lastT}`);
    const fields = data.fields;
    const cutoff = Date.now() - SPAN_MS - 60000;
    for (const [cid, rows] of Object.entries(data.series)) {
      const pts = store.series[cid] || (store.series[cid] = []);
      for (const row of rows) {
        const p = {};
        fields.forEach((f, i) => (p[f] = row[i]));
        pts.push(p);
        store.lastT = Math.max(store.lastT, p.t);
      }
      while (pts.length && pts[0].t < cutoff) pts.shift();
    }
  } catch (err) {
    if (err instanceof AuthError) return; // pollStatus signs out
    store.error = String(err.message || err);
  }
  paint();
}

function paint() {
  live.dataset.state = Date.now() - store.okAt < 3 * STATUS_MS ? "on" : "stale";
  live.title = store.error ? `last poll failed: ${store.error}` : "live";
  if (view && store.status) view.update(store);
}

function startPolling() {
  if (timers.length) return;
  pollStatus();
  pollSeries();
  timers = [setInterval(pollStatus, STATUS_MS), setInterval(pollSeries, SERIES_MS)];
}

function stopPolling() {
  timers.forEach(clearInterval);
  timers = [];
}

// A view's action changed something: poll now rather than at the next tick.
export function refreshSoon() {
  pollStatus();
}

signoutButton.addEventListener("click", () => {
  signOut();
  store.status = null;
  store.series = {};
  store.lastT = 0;
  location.hash = "#/";
  showSignIn("Signed out.");
});
window.addEventListener("hashchange", show);
takeKeyFromAddress();
show();
