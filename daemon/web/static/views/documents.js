// Documents: drop a PDF, see its pages, ask it; the pages an answer cites (or was given) open beside it.
//
// Everything goes through /api/documents (daemon/web/api_documents.py), which runs the daemon's own
// IngestDocument / AskDocument handlers: a PDF added here is the one `omni doc ask` answers from.
import { api, el, showError, sse } from "../common.js";
import { deleteButton } from "./w2_parts.js";

export const title = "Documents";

export function mount(root) {
  const view = new DocumentsView(root);
  root.addEventListener("omnid:shown", () => view.refresh()); // shown again: what other clients added
  view.refresh();
}

class DocumentsView {
  constructor(root) {
    this.current = null; // the selected document's DocumentInfo
    this.input = el("input", { type: "file", accept: "application/pdf,.pdf", id: "doc-file", hidden: true });
    this.progress = el("div", { class: "w2-progress", id: "doc-progress" });
    this.drop = el("label", { class: "w2-drop", id: "doc-drop", for: "doc-file" },
      el("strong", {}, "Drop a PDF here"), " or click to choose one", this.input);
    this.list = el("ul", { class: "w2-list", id: "doc-list" });
    this.detail = el("section", { class: "w2-detail", id: "doc-detail" },
      el("p", { class: "w2-muted" }, "Add a PDF, or pick one on the left."));
    this.page = el("aside", { class: "w2-page", id: "doc-page" });
    root.replaceChildren(el("div", { class: "w2-columns" },
      el("nav", { class: "w2-side" }, this.drop, this.progress, el("h3", {}, "Your documents"), this.list),
      this.detail, this.page));
    this.input.addEventListener("change", () => this.input.files[0] && this.ingest(this.input.files[0]));
    for (const name of ["dragenter", "dragover"]) {
      this.drop.addEventListener(name, (e) => { e.preventDefault(); this.drop.classList.add("w2-over"); });
    }
    this.drop.addEventListener("dragleave", () => this.drop.classList.remove("w2-over"));
    this.drop.addEventListener("drop", (e) => {
      e.preventDefault();
      this.drop.classList.remove("w2-over");
      const file = [...e.dataTransfer.files].find((f) => f.type === "application/pdf" || /\.pdf$/i.test(f.name));
      if (file) this.ingest(file); else showError("That is not a PDF.");
    });
  }

  async refresh() {
    try {
      const { documents } = await api("/api/documents");
      this.list.replaceChildren(...documents.map((doc) => el("li", {},
        el("button", { class: "w2-link", "data-doc": doc.document_id, onclick: () => this.show(doc) },
          doc.name, el("span", { class: "w2-muted" }, ` ${doc.page_count} pages`)))));
      if (!documents.length) this.list.replaceChildren(el("li", { class: "w2-muted" }, "None yet."));
    } catch (err) {
      showError(err);
    }
  }

  async ingest(file, password = "") {
    const form = new FormData();
    form.append("file", file, file.name);
    if (password) form.append("password", password);
    this.progress.textContent = `Reading ${file.name}…`;
    try {
      await sse("/api/documents", { method: "POST", body: form }, (event) => {
        if (event.error) throw new Error(event.error.message);
        if (event.progress) {
          const p = event.progress;
          const prefill = p.prefill && p.prefill.total ? `, ${p.prefill.done} of ${p.prefill.total} tokens` : "";
          this.progress.textContent = `${p.stage}: page ${p.pages_done} of ${p.pages_total}${prefill}`;
        } else if (event.done) {
          this.progress.textContent = `${event.done.name}: ${event.done.page_count} pages ready`;
          this.show(event.done);
        }
      });
      this.refresh();
    } catch (err) {
      this.progress.textContent = "";
      if (/encrypted|password/.test(err.message)) this.askPassword(file, err.message);
      else showError(err);
    }
    this.input.value = "";
  }

  // An encrypted PDF: its password, asked for beside the drop zone (it goes to the daemon with the file only).
  askPassword(file, message) {
    const input = el("input", { type: "password", id: "doc-password", placeholder: "Password",
      autocomplete: "off" });
    const form = el("form", { class: "w2-ask", id: "doc-password-form" }, input,
      el("button", { type: "submit" }, "Open"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.progress.replaceChildren();
      this.ingest(file, input.value);
    });
    this.progress.replaceChildren(el("span", {}, `${file.name}: ${message}`), form);
    input.focus();
  }

  show(doc) {
    this.current = doc;
    const pages = el("ol", { class: "w2-pages", id: "doc-pages" }, ...doc.pages.map((p) => el("li", {},
      this.pageLink(p.page, p.kind === "image" ? "scan" : p.kind === "unread" ? "unread" : "text"))));
    const question = el("input", { type: "text", id: "doc-question", placeholder: "Ask this document…",
      autocomplete: "off" });
    const answer = el("div", { class: "w2-answer", id: "doc-answer" });
    const form = el("form", { class: "w2-ask", id: "doc-ask" }, question, el("button", { type: "submit" }, "Ask"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (question.value.trim()) this.ask(doc, question.value, answer);
    });
    const facts = `${doc.page_count} pages, ${doc.total_tokens} tokens` +
      (doc.fits_context ? "" : `; a question reads about ${doc.question_pages} pages`);
    const remove = deleteButton("doc-delete", async () => {
      await api(`/api/documents/${doc.document_id}`, { method: "DELETE" });
      this.current = null;
      this.detail.replaceChildren(el("p", { class: "w2-muted" }, `${doc.name} was deleted.`));
      this.page.replaceChildren();
      this.refresh();
    });
    this.detail.replaceChildren(el("div", { class: "w2-title" }, el("h2", {}, doc.name), remove),
      el("p", { class: "w2-muted" }, facts), pages, form, answer);
    question.focus();
  }

  async ask(doc, question, answer) {
    const text = el("p", { class: "w2-answer-text" });
    const notes = el("p", { class: "w2-muted" }, "Thinking…");
    answer.replaceChildren(text, notes);
    try {
      await sse(`/api/documents/${doc.document_id}/ask`, { method: "POST", json: { question } }, (event) => {
        if (event.error) throw new Error(event.error.message);
        if (event.done) { // carries the citations and the pages the answer was given
          text.textContent = event.done.text;
          answer.replaceChildren(text, this.sources(event));
        } else if (event.delta !== undefined) {
          text.append(event.delta);
          notes.textContent = "";
        } else if (event.pages) {
          notes.textContent = `Reading pages ${event.pages.pages.join(", ")}`;
        } else if (event.progress) {
          notes.textContent = `Reading: ${event.progress.done} of ${event.progress.total} tokens`;
        }
      });
    } catch (err) {
      notes.textContent = "";
      showError(err);
    }
  }

  // The pages the answer cites (its "(p. N)"), then the pages it was given: each opens the page.
  sources(event) {
    const cited = event.citations.map((c) => c.page);
    const box = el("div", { class: "w2-sources", id: "doc-citations" });
    if (cited.length) box.append(el("span", {}, "Cited: "), ...cited.map((n) => this.pageLink(n, "", "w2-cited")));
    const given = event.pages.filter((n) => !cited.includes(n));
    if (given.length) box.append(el("span", { class: "w2-muted" }, cited.length ? " Also read: " : "From pages: "),
      ...given.map((n) => this.pageLink(n)));
    return box;
  }

  pageLink(number, kind = "", extra = "") {
    return el("button", { class: `w2-chip ${extra}`, "data-page": number, onclick: () => this.openPage(number) },
      `p. ${number}`, kind ? el("small", {}, ` ${kind}`) : "");
  }

  async openPage(number) {
    const doc = this.current;
    try {
      const page = await api(`/api/documents/${doc.document_id}/pages/${number}`);
      const body = page.image
        ? el("img", { src: page.image, alt: `page ${number} of ${doc.name}`, class: "w2-scan" })
        : el("pre", { class: "w2-text" }, page.text || "(no text on this page)");
      this.page.replaceChildren(el("h3", { id: "doc-page-title" }, `${doc.name}, page ${number}`), body);
    } catch (err) {
      showError(err);
    }
  }
}
