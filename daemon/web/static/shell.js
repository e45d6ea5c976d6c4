// The page's shell: loads the views index.html lists, shows the one the URL hash names, and keeps the model
// pill in the top bar current. The view contract is written at the top of common.js.
import { api, el, showError } from "./common.js";

const views = new Map(); // name -> { module, root, link, mounted }

async function load(link) {
  const name = link.dataset.view;
  link.href = `#${name}`;
  try {
    const module = await import(`./views/${name}.js`);
    link.textContent = module.title;
    const root = el("section", { class: "view", id: `view-${name}`, hidden: true });
    document.getElementById("views").append(root);
    views.set(name, { module, root, link, mounted: false });
  } catch (err) {
    link.remove();
    showError(`The ${name} view did not load: ${err.message}`);
  }
}

function show() {
  const wanted = location.hash.slice(1);
  const name = views.has(wanted) ? wanted : views.keys().next().value;
  for (const [other, view] of views) {
    const here = other === name;
    view.root.hidden = !here;
    view.link.classList.toggle("current", here);
    if (here && !view.mounted) {
      view.mounted = true;
      try {
        view.module.mount(view.root);
      } catch (err) {
        showError(err);
      }
    }
    if (here) view.root.dispatchEvent(new CustomEvent("omnid:shown"));
  }
  if (name) document.title = `omnid: ${views.get(name).module.title}`;
}

async function model() {
  const pill = document.getElementById("model");
  try {
    const s = await api("/api/status");
    pill.textContent = s.model_name + (s.model_loaded ? "" : " (not loaded)");
    pill.dataset.state = s.busy ? "busy" : s.model_loaded ? "ready" : "unloaded";
    pill.title = `${s.model_name}: ${s.backend}, ${s.context_length} tokens of context`;
  } catch (err) {
    pill.textContent = "offline";
    pill.dataset.state = "offline";
    pill.title = err.message;
  }
}

async function start() {
  await Promise.all([...document.querySelectorAll("#nav a[data-view]")].map(load));
  // the nav keeps index.html's order, whatever order the modules arrived in
  for (const link of document.querySelectorAll("#nav a[data-view]")) {
    const view = views.get(link.dataset.view);
    if (view) document.getElementById("views").append(view.root);
  }
  window.addEventListener("hashchange", show);
  show();
  model();
  setInterval(model, 5000);
  document.body.dataset.ready = "true"; // tests wait for this
}

start();
