// omnid's web page: the helpers every view uses, and the contract a view keeps.
//
// THE VIEW CONTRACT
//   A view is an ES module, static/views/NAME.js, that exports
//       export const title = "Documents";      // its label in the nav
//       export function mount(root) { ... }     // root: an empty <section> that the view alone fills
//   index.html lists the views, one line each, in the nav's order:  <a data-view="NAME"></a>
//   shell.js imports each listed module, shows one view at a time by the URL hash (#chat, #documents,
//   #meetings, #screen, #status; the first listed without one) and calls mount(root) once, the first time the
//   view is shown; a hidden view keeps its DOM and state. A view that wants to know when it is shown again
//   listens for the "omnid:shown" event on its root.
//   Views import only from this module, touch nothing outside their root (errors go through showError), and
//   style their own elements with classes of app.css (a view's own rules go in a marked section there).
//
// REQUESTS are same-origin: the browser sends the session cookie (HttpOnly, set by /login) by itself, so no
// script ever holds the token; the daemon refuses a request that changes something unless it comes from this
// origin. The page's Content-Security-Policy allows scripts, styles and requests from this origin only (and
// data:/blob: images and sounds): no inline <script>, no inline style="" attributes, nothing from a CDN.

/** An error answer of the daemon: `status` is the HTTP status, the message the daemon's own line. */
export class ApiError extends Error {
  constructor(status, message, code = "") {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** fetch() options from api()'s: `json` (an object, sent as a JSON body) or `body` (FormData, Blob, string),
 * `method` (GET by default), `headers`, `signal` (an AbortSignal). */
function request(opts) {
  const { json, headers = {}, ...rest } = opts;
  const init = { credentials: "same-origin", ...rest, headers: { ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
    init.method = init.method || "POST";
  }
  return init;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = "";
  try {
    const body = await response.json();
    if (body && body.error) ({ message, code = "" } = body.error);
  } catch {
    // not a JSON error body: the status line says it
  }
  return new ApiError(response.status, message, code);
}

/** A request to the daemon; resolves to the parsed JSON answer (text for other types), rejects with an
 * ApiError carrying the daemon's message. */
export async function api(path, opts = {}) {
  const response = await fetch(path, request(opts));
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** A request whose answer is server-sent events: onEvent(data) for each `data:` line's JSON, in order, until
 * the stream ends or sends [DONE]. Resolves when it ends; rejects with an ApiError for an error status, with
 * what onEvent threw (the stream is then cancelled), or with an AbortError when opts.signal aborts. */
export async function sse(path, opts, onEvent) {
  const response = await fetch(path, request(opts || {}));
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffered += decoder.decode(value || new Uint8Array(), { stream: !done });
      let end;
      while ((end = buffered.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffered.slice(0, end);
        buffered = buffered.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
      if (done) return;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** A DOM element: el("button", { class: "primary", onclick: fn, "data-id": 3, hidden: true }, "Send", child).
 * Attributes: `on…` functions become listeners; `class`, `id` and other strings become attributes; true is
 * an empty attribute, false/null/undefined none; `value`, `checked` and `hidden` are set as properties.
 * Children: nodes, strings (as text, never as HTML), numbers, arrays of them; null and false are skipped. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "value" || name === "checked" || name === "hidden") {
      node[name] = value;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

/** Say that something failed, in the page's error bar (a string, an Error or an ApiError); a lost login
 * says how to log in again. */
export function showError(err) {
  const bar = document.getElementById("error");
  let message = typeof err === "string" ? err : (err && err.message) || String(err);
  if (err instanceof ApiError && err.status === 401) {
    message = "Your login has ended: open the page again from the menubar (Ask…) or with `omni web`.";
  }
  if (err && err.name === "AbortError") return; // the person stopped it
  console.error(err);
  if (!bar) return;
  bar.replaceChildren(el("span", {}, message),
    el("button", { class: "close", title: "Dismiss", onclick: () => { bar.hidden = true; } }, "×"));
  bar.hidden = false;
}

/** A file's bytes as a data: URL (images and sounds go to /v1/chat/completions this way). */
export function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** A byte count for people: "512 B", "3.4 MiB". */
export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
