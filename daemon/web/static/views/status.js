// Status: what the daemon runs (GET /api/status, the Status RPC's reply as `omni status` reads it): the model,
// the prompt cache's use, the decoder's sequences and the queue. Refreshed every few seconds while shown.
//
// Fields are read by name and shown when present: a daemon with parallel sequences reports more of them.
import { api, bytes, el, showError } from "../common.js";

export const title = "Status";

const REFRESH_MS = 3000;

export function mount(root) {
  const view = new StatusView(root);
  view.refresh();
  setInterval(() => { if (!root.hidden) view.refresh(); }, REFRESH_MS);
  root.addEventListener("omnid:shown", () => view.refresh());
}

function seconds(s) {
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function rows(pairs) {
  return el("dl", {}, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)]));
}

function job(j) {
  const p = j.progress && j.progress.total ? ` · ${j.progress.stage} ${j.progress.done}/${j.progress.total} ` +
    `${j.progress.unit}` : "";
  const on = j.sequence !== undefined && j.sequence >= 0 ? ` · sequence ${j.sequence}` : "";
  const time = j.running_seconds ? `running ${seconds(j.running_seconds)}` : `waiting ${seconds(j.queued_seconds)}`;
  return el("li", {}, el("strong", {}, j.name), ` · ${time}${on}${p}`);
}

class StatusView {
  constructor(root) {
    this.cards = el("div", { class: "cards", id: "status-cards" });
    root.replaceChildren(this.cards);
  }

  async refresh() {
    try {
      this.show(await api("/api/status"));
    } catch (err) {
      showError(err);
    }
  }

  show(s) {
    const c = s.cache || {};
    const model = el("section", { class: "card", id: "status-model" }, el("h3", {}, "Model"), rows([
      ["name", s.model_name],
      ["state", s.model_loaded ? "loaded" : "not loaded (the next request loads it)"],
      ["backend", s.backend],
      ["can", (s.capabilities || []).join(", ")],
      ["context", `${s.context_length} tokens` + (s.context_source ? ` (${s.context_source})` : "")],
      ["prefill", s.prefill_tokens_per_second ? `${s.prefill_tokens_per_second.toFixed(0)} tokens/s` : ""],
      ["file", s.model_path],
    ]));
    const ram = el("meter", { min: 0, max: c.ram_budget_bytes || 1, value: c.ram_bytes || 0, id: "status-cache-ram" });
    const cache = el("section", { class: "card", id: "status-cache" }, el("h3", {}, "Prompt cache"), rows([
      ["RAM", el("span", {}, `${bytes(c.ram_bytes || 0)} of ${bytes(c.ram_budget_bytes || 0)} `, ram)],
      ["disk", bytes(c.disk_bytes || 0)],
      ["entries", `${c.entries || 0} (${c.pinned || 0} pinned)`],
      ["hits", `${c.hits || 0} hits, ${c.misses || 0} misses`],
      ["reused", `${c.tokens_reused || 0} tokens`],
      ["evictions", c.evictions || 0],
    ]));
    const active = s.active && s.active.length ? s.active : s.running ? [s.running] : [];
    const decoder = el("section", { class: "card", id: "status-queue" }, el("h3", {}, "Decoder and queue"), rows([
      ["sequences", s.sequences_total ? `${s.sequences_in_use || 0} of ${s.sequences_total} in use` : ""],
      ["queue", `${s.queue_depth} of ${s.queue_capacity} waiting` + (s.busy ? " · busy" : "")],
      ["classes", s.queue_interactive !== undefined && s.sequences_total
        ? `${s.queue_interactive} interactive, ${s.queue_background} background` : ""],
      ["batch", s.batch_sequences ? `${s.batch_sequences.toFixed(1)} sequences, ${s.batch_tokens.toFixed(0)} ` +
        "tokens per step" : ""],
    ]), active.length || (s.waiting || []).length
      ? el("ol", { class: "jobs", id: "status-jobs" }, active.map(job), (s.waiting || []).map(job))
      : el("p", { class: "muted" }, "Nothing running."));
    const daemon = el("section", { class: "card", id: "status-daemon" }, el("h3", {}, "Daemon"), rows([
      ["version", s.version],
      ["up", seconds(s.uptime_seconds || 0)],
      ["memory", `${bytes(s.memory_rss_bytes || 0)} resident`],
      ["endpoints", s.endpoint],
      ["unloads", s.idle_unload_seconds ? `after ${seconds(s.idle_unload_seconds)} idle` : "never"],
      ["note", s.note],
    ]));
    this.cards.replaceChildren(model, cache, decoder, daemon);
  }
}
