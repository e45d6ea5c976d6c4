// What the documents and meetings views share (not a view: index.html does not list it).
import { el, showError } from "../common.js";

// A Delete button that asks once more on the button itself ("Delete?"), so no dialog blocks the page, and
// goes back after a few seconds without the second click. `remove` does the deleting (it may throw).
export function deleteButton(id, remove) {
  const button = el("button", { id, class: "w2-delete", type: "button" }, "Delete");
  let armed = null;
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = "Delete?";
      armed = setTimeout(() => { armed = null; button.textContent = "Delete"; }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.disabled = true;
    try {
      await remove();
    } catch (err) {
      button.disabled = false;
      button.textContent = "Delete";
      showError(err);
    }
  });
  return button;
}
