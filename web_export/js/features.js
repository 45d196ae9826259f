// Feature search (the TUI's `/` query language, served by /api/features) and the feature card
// (top tokens, contexts shaded by activation, logit effects, and an ablate button).

import { api } from "./api.js";
import { esc } from "./graph.js";

export class FeaturePanel {
  /** `onAblate(layer, id)`: the card's ablate button; `onGraph(layer, id)`: its provenance button. */
  constructor({ form, layerSelect, query, results, more, cardPanel, card, onAblate, onGraph, onError }) {
    Object.assign(this, { form, layerSelect, query, results, more, cardPanel, card, onAblate, onGraph, onError });
    form.addEventListener("submit", (ev) => { ev.preventDefault(); this.search(); });
    layerSelect.addEventListener("change", () => this.search());
    let timer = null;
    query.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => this.search(), 250); });
  }

  setLayers(layers, current) {
    this.layerSelect.innerHTML = layers.map((l) => `<option value="${l}">L${l}</option>`).join("");
    if (current !== undefined && current !== null) this.layerSelect.value = String(current);
  }

  async search() {
    const layer = this.layerSelect.value;
    if (layer === "") return;
    try {
      const res = await api.features({ layer, q: this.query.value.trim(), limit: 30 });
      this.results.innerHTML = res.rows.map((r) => `<li data-layer="${esc(res.layer)}" data-id="${esc(r.id)}">
        <span class="fid">F${esc(r.id)}</span><span class="toks">${esc((r.top_tokens || []).map((t) => JSON.stringify(t)).join(" "))}</span></li>`).join("");
      this.more.textContent = `${res.rows.length} of ${res.total} features`;
      for (const li of this.results.querySelectorAll("li")) {
        li.addEventListener("click", () => this.open(Number(li.dataset.layer), Number(li.dataset.id)));
      }
    } catch (e) { this.onError(e.message); }
  }

  async open(layer, id) {
    try {
      const f = await api.feature(layer, id);
      this.show(f);
    } catch (e) { this.onError(e.message); }
  }

  show(f) {
    const s = f.stats || {};
    const ctx = (f.contexts || []).slice(0, 8).map((c) => {
      const max = c.max || Math.max(1e-9, ...c.acts);
      return `<div class="ctx">${c.tokens.map((t, i) => {
        const a = Math.max(0, c.acts[i] || 0) / max;
        return `<span style="background: rgba(224,121,59,${(0.85 * a).toFixed(2)})" title="${(c.acts[i] || 0).toFixed(3)}">${esc(t)}</span>`;
      }).join("")}</div>`;
    }).join("");
    const chips = (xs, cls) => (xs || []).slice(0, 8).map((x) => `<span class="chip ${cls}">${esc(JSON.stringify(x.token))} ${x.value !== undefined ? Number(x.value).toFixed(2) : ""}</span>`).join("");
    const cloud = (f.cloud || []).slice(0, 12).map((c) => `<span class="chip">${esc(JSON.stringify(c.token))}</span>`).join("");
    const num = (v) => (typeof v === "number" ? v.toPrecision(3) : "–");
    this.card.innerHTML = `<h3>L${esc(f.layer)} · F${esc(f.id)}</h3>
      <div class="muted">density ${num(s.density)} · mean ${num(s.mean)} · max ${num(s.max)}</div>
      <div class="section"><h2>Top tokens</h2>${cloud || '<span class="muted">none</span>'}</div>
      <div class="section"><h2>Logit effects</h2><div>${chips(f.logit_effects && f.logit_effects.up, "up")}</div>
        <div>${chips(f.logit_effects && f.logit_effects.down, "down")}</div></div>
      <div class="section"><h2>Contexts</h2>${ctx || '<span class="muted">no contexts</span>'}</div>
      <div class="section"><button type="button" id="ablate">Ablate L${esc(f.layer)} F${esc(f.id)}</button>
        <button type="button" id="graph-this">Provenance graph</button></div>`;
    this.card.dataset.layer = f.layer;
    this.card.dataset.id = f.id;
    this.card.querySelector("#ablate").addEventListener("click", () => this.onAblate(f.layer, f.id));
    this.card.querySelector("#graph-this").addEventListener("click", () => this.onGraph(f.layer, f.id));
    this.cardPanel.hidden = false;
  }
}
