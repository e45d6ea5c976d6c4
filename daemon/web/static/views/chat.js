// Chat: a conversation with the daemon's model through its OpenAI-compatible /v1/chat/completions, streamed.
//
// The whole conversation is sent each turn, as any OpenAI client does; the daemon's prompt cache finds the
// turns it has seen, so a follow-up question costs only its own tokens (the usage line's "cached" says how
// many were reused). Images (pasted, dropped or chosen) go as data: URLs, sound files as input_audio; the
// model's thinking streams into a folded <details>; usage and timings show on hovering the line under the
// answer.
import { dataUrl, el, showError, sse } from "../common.js";

export const title = "Chat";

/** The input_audio formats /v1/chat/completions takes, by file extension and MIME subtype. */
const AUDIO_FORMATS = { wav: "wav", wave: "wav", "x-wav": "wav", mp3: "mp3", mpeg: "mp3", flac: "flac",
  "x-flac": "flac", ogg: "ogg", oga: "ogg" };

export function mount(root) {
  new ChatView(root);
}

function audioFormat(file) {
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  return AUDIO_FORMATS[ext] || AUDIO_FORMATS[(file.type.split("/")[1] || "").toLowerCase()] || "";
}

class ChatView {
  constructor(root) {
    this.history = [];      // the conversation as OpenAI messages
    this.attached = [];     // {kind: "image"|"audio", url, name, format}
    this.running = null;    // the AbortController of the answer being written
    this.messages = el("div", { class: "messages", id: "chat-messages", "aria-live": "polite" });
    this.chips = el("div", { class: "chips", id: "chat-attachments" });
    this.input = el("textarea", { id: "chat-input", rows: 2, placeholder: "Message omnid… (Enter sends, " +
      "Shift+Enter a new line; paste or drop images and sound files)" });
    this.file = el("input", { type: "file", id: "chat-file", accept: "image/*,audio/*,.wav,.mp3,.flac,.ogg",
      multiple: true, hidden: true });
    this.send = el("button", { class: "primary", id: "chat-send", type: "submit" }, "Send");
    this.stop = el("button", { id: "chat-stop", type: "button", hidden: true, onclick: () => this.abort() },
      "Stop");
    this.thinking = el("select", { id: "chat-thinking", title: "Whether the model thinks before it answers " +
      "(models that can)" }, el("option", { value: "" }, "Thinking: model's default"),
      el("option", { value: "medium" }, "Think first"), el("option", { value: "none" }, "Don't think"));
    const composer = el("form", { class: "composer", id: "chat-form" }, this.chips, this.input,
      el("div", { class: "row" },
        el("button", { type: "button", id: "chat-attach", title: "Attach images or sound files",
          onclick: () => this.file.click() }, "Attach…"), this.file,
        this.thinking,
        el("span", { class: "grow" }),
        el("button", { type: "button", id: "chat-new", onclick: () => this.reset() }, "New chat"),
        this.stop, this.send));
    root.replaceChildren(el("div", { class: "chat" }, this.messages, composer));

    composer.addEventListener("submit", (e) => { e.preventDefault(); this.ask(); });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.ask(); }
    });
    this.file.addEventListener("change", () => { this.attach([...this.file.files]); this.file.value = ""; });
    this.input.addEventListener("paste", (e) => {
      const files = [...(e.clipboardData?.files || [])];
      if (files.length) { e.preventDefault(); this.attach(files); }
    });
    for (const name of ["dragenter", "dragover"]) {
      root.addEventListener(name, (e) => { e.preventDefault(); composer.classList.add("over"); });
    }
    root.addEventListener("dragleave", (e) => {
      if (!root.contains(e.relatedTarget)) composer.classList.remove("over");
    });
    root.addEventListener("drop", (e) => {
      e.preventDefault();
      composer.classList.remove("over");
      this.attach([...(e.dataTransfer?.files || [])]);
    });
    root.addEventListener("omnid:shown", () => this.input.focus());
  }

  async attach(files) {
    for (const file of files) {
      const kind = file.type.startsWith("image/") ? "image" : audioFormat(file) ? "audio" : "";
      if (!kind) {
        showError(`${file.name}: only images and sound files (WAV, MP3, FLAC, OGG) can be attached`);
        continue;
      }
      try {
        this.attached.push({ kind, name: file.name || kind, url: await dataUrl(file), format: audioFormat(file) });
      } catch (err) {
        showError(err);
      }
    }
    this.showChips();
  }

  showChips() {
    this.chips.replaceChildren(...this.attached.map((a, i) => el("span", { class: "chip", "data-kind": a.kind },
      a.kind === "image" ? el("img", { src: a.url, alt: a.name }) : el("span", {}, "♪ ", a.name),
      el("button", { type: "button", title: "Remove", onclick: () => { this.attached.splice(i, 1); this.showChips(); } },
        "×"))));
  }

  reset() {
    this.abort();
    this.history = [];
    this.messages.replaceChildren();
    this.input.focus();
  }

  abort() {
    if (this.running) this.running.abort();
  }

  /** The user's turn as an OpenAI message: plain text, or parts when something is attached. */
  userMessage(text) {
    if (!this.attached.length) return { role: "user", content: text };
    const parts = this.attached.map((a) => a.kind === "image"
      ? { type: "image_url", image_url: { url: a.url } }
      : { type: "input_audio", input_audio: { data: a.url.slice(a.url.indexOf(",") + 1), format: a.format } });
    if (text) parts.push({ type: "text", text });
    return { role: "user", content: parts };
  }

  bubbleForUser(text) {
    const media = this.attached.map((a) => a.kind === "image"
      ? el("img", { class: "thumb", src: a.url, alt: a.name })
      : el("audio", { controls: true, src: a.url, title: a.name }));
    return el("div", { class: "msg user" }, media.length ? el("div", { class: "attachments" }, media) : null, text);
  }

  async ask() {
    const text = this.input.value.trim();
    if (this.running || (!text && !this.attached.length)) return;
    const message = this.userMessage(text);
    this.messages.append(this.bubbleForUser(text));
    this.input.value = "";
    this.attached = [];
    this.showChips();

    const answer = new Answer();
    this.messages.append(answer.node);
    answer.node.scrollIntoView({ block: "end" });
    const body = { messages: [...this.history, message], stream: true, stream_options: { include_usage: true } };
    if (this.thinking.value) body.reasoning_effort = this.thinking.value;
    this.running = new AbortController();
    this.send.disabled = true;
    this.stop.hidden = false;
    const started = performance.now();
    try {
      await sse("/v1/chat/completions", { method: "POST", json: body, signal: this.running.signal }, (chunk) => {
        if (chunk.error) throw new Error(chunk.error.message);
        answer.chunk(chunk);
        this.messages.scrollTop = this.messages.scrollHeight;
      });
      answer.finish(performance.now() - started);
      this.history.push(message, { role: "assistant", content: answer.text });
    } catch (err) {
      answer.fail(err.name === "AbortError" ? "Stopped." : err.message);
      if (err.name !== "AbortError") showError(err);
    } finally {
      this.running = null;
      this.send.disabled = false;
      this.stop.hidden = true;
      this.input.focus();
    }
  }
}

/** One answer as it streams: the folded thinking, the text, and the usage line. */
class Answer {
  constructor() {
    this.text = "";
    this.reasoning = "";
    this.usage = null;
    this.thought = el("div", {});
    this.fold = el("details", { class: "thinking", hidden: true }, el("summary", {}, "Thinking"), this.thought);
    this.body = el("div", { class: "answer" });
    this.line = el("div", { class: "usage", hidden: true });
    this.node = el("div", { class: "msg assistant" }, this.fold, this.body, this.line);
  }

  chunk(chunk) {
    if (chunk.usage) this.usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      const delta = choice.delta || {};
      if (delta.reasoning_content) {
        this.reasoning += delta.reasoning_content;
        this.thought.textContent = this.reasoning;
        this.fold.hidden = false;
      }
      if (delta.content) {
        this.text += delta.content;
        this.body.textContent = this.text;
      }
    }
  }

  finish(ms) {
    if (!this.text) {
      this.body.textContent = this.reasoning ? "(only thinking, no answer: open it above)" : "(no answer)";
      this.body.classList.add("muted");
    }
    this.fold.querySelector("summary").textContent = `Thinking (${this.reasoning.split(/\s+/).length} words)`;
    this.node.dataset.done = "true";
    const u = this.usage;
    if (!u) return;
    const cached = (u.prompt_tokens_details && u.prompt_tokens_details.cached_tokens) || 0;
    const seconds = ms / 1000;
    this.line.textContent = `${u.completion_tokens} tokens · ${seconds.toFixed(1)} s`;
    this.line.title = `prompt: ${u.prompt_tokens} tokens, ${cached} of them cached\n` +
      `answer: ${u.completion_tokens} tokens (${(u.completion_tokens / Math.max(seconds, 0.001)).toFixed(1)}/s ` +
      "with the prompt's evaluation)\n" + `total: ${u.total_tokens} tokens`;
    this.line.dataset.cached = cached;
    this.line.hidden = false;
  }

  fail(message) {
    this.body.classList.add("failed");
    this.body.textContent = this.text ? `${this.text}\n\n${message}` : message;
    this.node.dataset.done = "true";
  }
}
