// One contact, found by id or email: its current row and, per connection, the
// ledger (state, CRM id, synced version, last error), its place in the queue
// and its dead letters. Refreshed every few seconds while shown.

import { api } from "./api.js";
import { h, num, when } from "./format.js";

const REFRESH_MS = 3000;

export class ContactView {
  constructor(query) {
    this.query = query;
    this.loadedAt = 0;
    this.loading = false;
  }

  mount(main) {
    const input = h("input", {
      type: "search", id: "contact-query", name: "q", value: this.query,
      placeholder: "contact id or email", "aria-label": "contact id or email", required: true,
    });
    this.results = h("div", { id: "contact-results" });
    main.append(h("section", { id: "contact" },
      h("h1", { text: "Contact history" }),
      h("form", {
        class: "toolbar",
        onsubmit: (ev) => {
          ev.preventDefault();
          const q = input.value.trim();
          if (q) location.hash = `#/contact/${encodeURIComponent(q)}`;
        },
      }, input, h("button", { type: "submit", id: "contact-search" }, "Find")),
      this.results));
    if (this.query) this.load();
    else input.focus();
  }

  update() {
    if (this.query && !this.loading && Date.now() - this.loadedAt > REFRESH_MS) this.load();
  }

  async load() {
    this.loading = true;
    try {
      const data = await api(`/v1/contacts:lookup?q=${encodeURIComponent(this.query)}`);
      this.render(data);
    } catch (err) {
      this.results.replaceChildren(h("p", { class: "error", text: String(err.message || err) }));
    } finally {
      this.loading = false;
      this.loadedAt = Date.now();
    }
  }

  render(data) {
    if (!data.contacts.length) {
      this.results.replaceChildren(h("p", { class: "note", id: "no-contact", text: `No contact with id or email “${data.query}”.` }));
      return;
    }
    this.results.replaceChildren(...data.contacts.map((item) => this.one(item)));
  }

  one({ contact: c, sync, dead_letters: dead }) {
    const name = [c.first_name, c.last_name].filter(Boolean).join(" ");
    const row = [
      ["id", c.id], ["tenant", c.tenant], ["email", c.email], ["name", name || "–"],
      ["company", c.company || "–"], ["status", c.status], ["version", String(c.version)],
      ["updated", when(c.updated_at)], ["deleted", c.deleted_at ? when(c.deleted_at) : "no"],
    ];
    const ledger = sync.map((s) => h("tr", { "data-ledger": s.connection_id },
      h("td", { "data-label": "connection" }, h("a", { href: `#/connection/${encodeURIComponent(s.connection_id)}`, text: s.connection_id })),
      h("td", { "data-label": "CRM", text: s.crm }),
      h("td", { "data-label": "state", "data-field": "status", text: s.status || "not synced yet" }),
      h("td", { "data-label": "CRM id", class: "mono", "data-field": "external_id", text: s.external_id || "–" }),
      h("td", { "data-label": "synced version", class: "num", "data-field": "synced_version",
        text: s.synced_version == null ? "–" : `${s.synced_version}${s.synced_version < c.version ? ` of ${c.version}` : ""}` }),
      h("td", { "data-label": "attempts", class: "num", text: num(s.attempts || 0) }),
      h("td", { "data-label": "queue", text: s.queue || "–" }),
      h("td", { "data-label": "last error", class: "err", text: s.last_error || (s.rule ? `skipped by rule ${s.rule}` : "") }),
      h("td", { "data-label": "updated", text: when(s.updated_at) })));
    const letters = dead.map((d) => h("tr", { "data-dead-letter": String(d.id) },
      h("td", { "data-label": "connection", text: d.connection_id }),
      h("td", { "data-label": "operation", text: d.operation }),
      h("td", { "data-label": "version", class: "num", text: d.version == null ? "–" : String(d.version) }),
      h("td", { class: "err", "data-label": "CRM error", text: `${d.http_status ? `${d.http_status} ` : ""}${d.error_code ? `${d.error_code}: ` : ""}${d.error}` }),
      h("td", { "data-label": "attempts", class: "num", text: num(d.attempts) }),
      h("td", { "data-label": "when", text: when(d.created_at) })));
    return h("article", { class: "card", "data-contact": c.id },
      h("h2", { text: `${c.email} (${c.id})` }),
      h("dl", { class: "kv" }, row.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]).flat()),
      h("h3", { text: "Per connection" }),
      h("div", { class: "table-wrap" }, h("table", { class: "stack" },
        h("thead", {}, h("tr", {}, ["connection", "CRM", "state", "CRM id", "synced version", "attempts", "queue", "last error", "updated"].map((t) => h("th", { text: t })))),
        h("tbody", {}, ledger))),
      h("h3", { text: "Dead letters" }),
      letters.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "stack" },
          h("thead", {}, h("tr", {}, ["connection", "operation", "version", "CRM error", "attempts", "when"].map((t) => h("th", { text: t })))),
          h("tbody", {}, letters)))
        : h("p", { class: "note", text: "None." }));
  }
}
