// Screen history: search what the model saw, each hit with the frame it was shown; the watcher's state,
// start, pause, resume and stop.
//
// /api/screen (daemon/web/api_screen.py) runs the daemon's screen handlers: the same history and the same
// watcher as `omni screen` and the menubar.
import { api, el, showError, sse } from "../common.js";

export const title = "Screen";

export function mount(root) {
  const view = new ScreenView(root);
  root.addEventListener("omnid:shown", () => view.refreshState());
  view.refreshState();
  view.search();
}

class ScreenView {
  constructor(root) {
    this.state = el("p", { class: "w2-muted", id: "screen-state" });
    this.start = el("button", { id: "screen-start", onclick: () => this.control("start") }, "Start watching");
    this.pause = el("button", { id: "screen-pause", hidden: true, onclick: () => this.control("pause") }, "Pause");
    this.resume = el("button", { id: "screen-resume", hidden: true, onclick: () => this.control("resume") },
      "Resume");
    this.stop = el("button", { id: "screen-stop", hidden: true, onclick: () => this.control("stop") }, "Stop");
    this.query = el("input", { type: "search", id: "screen-query", placeholder: "Search what was on screen…" });
    this.results = el("ol", { class: "w2-frames", id: "screen-results" });
    this.viewer = el("aside", { class: "w2-page", id: "screen-viewer" });
    const form = el("form", { class: "w2-ask", id: "screen-search" }, this.query,
      el("button", { type: "submit" }, "Search"));
    form.addEventListener("submit", (e) => { e.preventDefault(); this.search(); });
    this.question = el("input", { type: "text", id: "screen-question", placeholder: "Ask about what was on screen…",
      autocomplete: "off" });
    this.answer = el("p", { class: "w2-answer-text", id: "screen-answer" });
    const ask = el("form", { class: "w2-ask", id: "screen-ask" }, this.question,
      el("button", { type: "submit" }, "Ask"));
    ask.addEventListener("submit", (e) => { e.preventDefault(); this.ask(); });
    root.replaceChildren(el("div", { class: "w2-columns" },
      el("section", { class: "w2-detail" },
        el("div", { class: "w2-controls" }, this.start, this.pause, this.resume, this.stop), this.state, ask,
        this.answer, form, this.results),
      this.viewer));
  }

  showState(s) {
    this.start.hidden = s.watching;
    this.pause.hidden = !s.watching || s.paused;
    this.resume.hidden = !s.watching || !s.paused;
    this.stop.hidden = !s.watching;
    this.state.dataset.state = !s.watching ? "off" : s.paused ? "paused" : "watching";
    this.state.textContent = !s.watching ? "The screen is not being watched."
      : `${s.paused ? "Paused" : "Watching"}: ${s.frames_sent} frames sent to the model, ` +
        `${s.frames_unchanged} unchanged, ${s.frames_excluded} excluded.`;
  }

  async refreshState() {
    try {
      this.showState(await api("/api/screen/watch"));
    } catch (err) {
      showError(err);
    }
  }

  async control(action) {
    try {
      this.showState(await api("/api/screen/watch", { method: "POST", json: { action } }));
    } catch (err) {
      showError(err);
    }
  }

  // A question answered by the model from the stored observations (the same AskScreen as `omni screen ask`).
  async ask() {
    const question = this.question.value.trim();
    if (!question) return;
    this.answer.replaceChildren();
    try {
      await sse("/api/screen/ask", { method: "POST", json: { question } }, (event) => {
        if (event.error) throw new Error(event.error.message);
        if (event.delta !== undefined) this.answer.append(event.delta);
        else if (event.done) this.answer.textContent = event.done.text;
      });
    } catch (err) {
      showError(err);
    }
  }

  async search() {
    const q = this.query.value.trim();
    try {
      const { observations } = await api(`/api/screen/search?q=${encodeURIComponent(q)}&limit=50`);
      this.results.replaceChildren(...observations.map((o) => this.hit(o)));
      if (!observations.length) {
        this.results.replaceChildren(el("li", { class: "w2-muted" }, q ? "Nothing matched." : "No history yet."));
      }
    } catch (err) {
      showError(err);
    }
  }

  hit(o) {
    const when = new Date(o.time_unix * 1000).toLocaleString();
    const where = [o.app, o.window].filter(Boolean).join(" — ") || `monitor ${o.monitor}`;
    const thumb = el("img", { src: o.frame, alt: `the screen at ${when}`, class: "w2-thumb", loading: "lazy" });
    thumb.addEventListener("error", () => thumb.remove()); // a row kept from before frames were stored
    return el("li", {}, el("button", { class: "w2-frame", "data-observation": o.id, onclick: () => this.show(o) },
      thumb, el("div", {}, el("strong", {}, where), el("span", { class: "w2-muted" }, ` ${when}`),
        el("p", {}, o.text))));
  }

  show(o) {
    const frame = el("img", { src: o.frame, alt: "the frame the model saw", class: "w2-scan", id: "screen-frame" });
    frame.addEventListener("error", () => frame.replaceWith(el("p", { class: "w2-muted" }, "No frame kept.")));
    this.viewer.replaceChildren(el("h3", {}, [o.app, o.window].filter(Boolean).join(" — ") || "Screen"),
      frame, el("h4", {}, "What the model saw"), el("p", { id: "screen-said" }, o.text));
  }
}
