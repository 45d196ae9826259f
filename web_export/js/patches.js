// The patch list: one toggle per patch (sent over the WebSocket), a remove button, state from the server.

import { esc } from "./graph.js";

export class PatchList {
  /** `onToggle(name, on, clickMs)`, `onRemove(name)`. */
  constructor(ul, { onToggle, onRemove }) {
    this.ul = ul;
    this.onToggle = onToggle;
    this.onRemove = onRemove;
    this.rows = [];
  }

  render(rows) {
    this.rows = rows;
    if (!rows.length) { this.ul.innerHTML = '<li class="muted">no patches: add one from a feature card</li>'; return; }
    // Rebuilt only when the set of patches changes, so a click never lands on a replaced element.
    const key = rows.map((r) => r.name).join("\n");
    if (this.ul.dataset.key !== key) {
      this.ul.dataset.key = key;
      this.ul.innerHTML = rows.map((r) => `<li data-patch="${esc(r.name)}">
        <input type="checkbox" class="toggle" aria-label="toggle ${esc(r.name)}">
        <span class="name">${esc(r.name)}</span>
        <span class="muted">${esc(describe(r))}</span>
        <button type="button" class="del" title="remove">×</button></li>`).join("");
      for (const li of this.ul.querySelectorAll("li[data-patch]")) {
        const name = li.dataset.patch;
        li.querySelector(".toggle").addEventListener("change", (ev) => this.onToggle(name, ev.target.checked, performance.now()));
        li.querySelector(".del").addEventListener("click", () => this.onRemove(name));
      }
    }
    for (const r of rows) {
      const li = this.ul.querySelector(`li[data-patch="${CSS.escape(r.name)}"]`);
      li.dataset.on = String(!!r.on);
      li.querySelector(".toggle").checked = !!r.on;
    }
  }
}

function describe(r) {
  const feats = r.features || [];
  const shown = feats.length > 4 ? `${feats.slice(0, 4).join(",")},…` : feats.join(",");
  return `${r.kind || "hook"} L${r.layer} [${shown}] ${r.mode || ""}`;
}
