// The provenance graph panel: a D3 force layout held in layer bands (y = layer, embeddings at the
// bottom, the target pinned on top, x ≈ token position), pruning, selection, pins and a tooltip.

import { nodeName } from "./graph_model.js";

const d3 = window.d3;
const MARGIN = { top: 28, right: 24, bottom: 24, left: 44 };
const SHAPES = { feature: d3.symbolCircle, error: d3.symbolSquare, embedding: d3.symbolDiamond, logit: d3.symbolTriangle };

export class GraphView {
  /** `onSelect(node|null)` runs on a click; `onChange()` after any selection/pin/threshold change. */
  constructor(svg, { tooltip, pruneInput, pruneLabel, note, onSelect, onChange }) {
    this.svg = d3.select(svg);
    this.tooltip = tooltip;
    this.pruneInput = pruneInput;
    this.pruneLabel = pruneLabel;
    this.note = note;
    this.onSelect = onSelect || (() => {});
    this.onChange = onChange || (() => {});
    this.model = null;
    this.selected = null;
    this.pinned = new Set();
    this.threshold = 0;
    pruneInput.addEventListener("input", () => this.setThreshold(Number(pruneInput.value)));
    this.svg.on("click", (ev) => { if (ev.target === svg) this.select(null); });
  }

  /** Draw a model from graph_model.buildModel (keeps pins/selection whose ids still exist). */
  setModel(model) {
    this.model = model;
    this.pinned = new Set([...this.pinned].filter((id) => model.byId.has(id)));
    if (this.selected && !model.byId.has(this.selected)) this.selected = null;
    this.layout();
    this.render();
  }

  layout() {
    const { nodes, links, root, bands } = this.model;
    const el = this.svg.node();
    const width = Math.max(el.clientWidth || 800, 300), height = Math.max(el.clientHeight || 500, 240);
    this.size = { width, height };
    const maxPos = Math.max(1, ...nodes.map((n) => n.pos ?? 0));
    this.x = d3.scaleLinear().domain([0, maxPos + 1]).range([MARGIN.left, width - MARGIN.right]);
    this.y = d3.scaleLinear().domain([0, Math.max(1, bands.length - 1)]).range([height - MARGIN.bottom, MARGIN.top]);
    const maxSize = d3.max(nodes, (n) => n.size) || 1;
    this.r = d3.scaleSqrt().domain([0, maxSize]).range([3, 16]);
    for (const n of nodes) {
      n.x0 = this.x(n.pos ?? maxPos + 1);  // no position (a layer's error node): the right edge
      n.y0 = this.y(n.band);
      if (n.x === undefined) { n.x = n.x0; n.y = n.y0; }
      n.fx = n === root ? (width - MARGIN.right + MARGIN.left) / 2 : null;
      n.fy = n === root ? MARGIN.top : null;
    }
    // Bands hold y firmly; x is pulled towards the token position; collisions spread a crowded band.
    // The layout is computed to rest up front (deterministic per graph, nothing moves after paint).
    const sim = d3.forceSimulation(nodes)
      .force("y", d3.forceY((n) => n.y0).strength(1))
      .force("x", d3.forceX((n) => n.x0).strength(0.25))
      .force("collide", d3.forceCollide((n) => this.r(n.size) + 4))
      .force("link", d3.forceLink(links).strength(0.02))
      .stop();
    for (let i = 0; i < 200; i++) sim.tick();
  }

  /** Nodes kept by the pruning slider: |attribution| ≥ threshold × the largest, plus the root, the pins and
   * the selection (what the user is looking at never disappears under them). */
  visibleIds() {
    const { nodes, root } = this.model;
    const maxSize = d3.max(nodes, (n) => n.size) || 1;
    const keep = new Set();
    for (const n of nodes) {
      if (n === root || this.pinned.has(n.id) || n.id === this.selected || n.size >= this.threshold * maxSize) {
        keep.add(n.id);
      }
    }
    return keep;
  }

  render() {
    if (!this.model) return;
    const { nodes, links, root, bands } = this.model;
    const { width, height } = this.size;
    const keep = this.visibleIds();
    const shown = nodes.filter((n) => keep.has(n.id));
    const shownLinks = links.filter((l) => keep.has(l.source.id) && keep.has(l.target.id));
    this.pruneLabel.textContent = `${shown.length} of ${nodes.length} nodes shown`;
    this.pruneLabel.dataset.shown = String(shown.length);
    this.pruneLabel.dataset.total = String(nodes.length);
    this.svg.attr("viewBox", `0 0 ${width} ${height}`).classed("has-sel", !!this.selected);

    const bandSel = this.svg.selectAll("g.bands").data([0]).join("g").attr("class", "bands")
      .selectAll("g.band").data(bands, (l) => l).join("g").attr("class", "band");
    bandSel.selectAll("line").data((l) => [l]).join("line")
      .attr("x1", MARGIN.left - 8).attr("x2", width - 4)
      .attr("y1", (l) => this.y(bands.indexOf(l))).attr("y2", (l) => this.y(bands.indexOf(l)));
    bandSel.selectAll("text").data((l) => [l]).join("text").attr("x", 4)
      .attr("y", (l) => this.y(bands.indexOf(l)) + 3)
      .text((l) => (l === -1 ? "emb" : l === Infinity ? "logit" : `L${l}`));

    const w = d3.scaleLinear().domain([0, d3.max(links, (l) => Math.abs(l.weight)) || 1]).range([0.5, 6]);
    const sel = this.selected;
    this.svg.selectAll("g.links").data([0]).join("g").attr("class", "links")
      .selectAll("path.link").data(shownLinks, (l) => `${l.source.id}>${l.target.id}`).join("path")
      .attr("class", (l) => `link ${l.weight >= 0 ? "pos" : "neg"}${sel && l.target.id === sel ? " in" : ""}${sel && l.source.id === sel ? " out" : ""}`)
      .attr("stroke-width", (l) => w(Math.abs(l.weight)))
      .attr("d", (l) => {
        const my = (l.source.y + l.target.y) / 2;
        return `M${l.source.x},${l.source.y} C${l.source.x},${my} ${l.target.x},${my} ${l.target.x},${l.target.y}`;
      });

    const near = new Set();
    if (sel) for (const l of shownLinks) {
      if (l.source.id === sel) near.add(l.target.id);
      if (l.target.id === sel) near.add(l.source.id);
    }
    const g = this.svg.selectAll("g.nodes").data([0]).join("g").attr("class", "nodes")
      .selectAll("g.node").data(shown, (n) => n.id).join((enter) => {
        const e = enter.append("g");
        e.append("path");
        e.append("text").attr("dy", -2);
        return e;
      });
    g.attr("class", (n) => ["node", n.kind, n === root ? "root" : "", this.pinned.has(n.id) ? "pinned" : "",
      n.id === sel ? "selected" : "", near.has(n.id) ? "near" : ""].filter(Boolean).join(" "))
      .attr("data-id", (n) => n.id).attr("data-layer", (n) => n.layer).attr("data-kind", (n) => n.kind)
      .attr("transform", (n) => `translate(${n.x},${n.y})`)
      .on("mouseenter", (ev, n) => this.showTooltip(ev, n))
      .on("mousemove", (ev, n) => this.showTooltip(ev, n))
      .on("mouseleave", () => { this.tooltip.hidden = true; })
      .on("click", (ev, n) => {
        ev.stopPropagation();
        if (ev.ctrlKey || ev.metaKey) this.togglePin(n.id);
        else this.select(n.id);
      });
    g.select("path").attr("d", (n) => d3.symbol(SHAPES[n.kind] || d3.symbolCircle, Math.PI * this.r(n.size) ** 2)());
    g.select("text").attr("x", (n) => this.r(n.size) + 2)
      .text((n) => (n === root || n.id === sel || this.pinned.has(n.id) ? nodeName(n) : ""));
  }

  showTooltip(ev, n) {
    const t = this.tooltip;
    const rows = [`<b>${esc(nodeName(n))}</b>`, `layer ${n.layer === -1 ? "embedding" : n.layer === Infinity ? "logit" : n.layer}` +
      ` · position ${n.pos ?? "–"} · token ${esc(JSON.stringify(n.token ?? "–"))}`];
    if (n.kind === "feature") rows.push(`feature ${n.feature}`);
    rows.push(`activation ${fmt(n.activation)} · |attribution| ${fmt(n.size)}`);
    const top = n.topTokens || (n.kind === "feature" && n.label ? [n.label] : null);
    if (top) rows.push(`top tokens ${esc(Array.isArray(top) ? top.join(" ") : top)}`);
    t.innerHTML = rows.join("<br>");
    t.hidden = false;
    const box = t.parentElement.getBoundingClientRect();
    t.style.left = `${Math.min(ev.clientX - box.left + 12, box.width - 290)}px`;
    t.style.top = `${ev.clientY - box.top + 12}px`;
  }

  select(id) {
    this.selected = id;
    this.render();
    this.onSelect(id ? this.model.byId.get(id) : null);
    this.onChange();
  }

  togglePin(id) {
    if (this.pinned.has(id)) this.pinned.delete(id); else this.pinned.add(id);
    this.render();
    this.onChange();
  }

  setThreshold(v) {
    this.threshold = Math.min(1, Math.max(0, v || 0));
    this.pruneInput.value = String(this.threshold);
    this.render();
    this.onChange();
  }

  /** Esc: drop the selection and the pins. */
  clear() {
    this.pinned.clear();
    this.tooltip.hidden = true;
    this.select(null);
  }
}

export function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

function fmt(v) {
  return v === null || v === undefined || !Number.isFinite(v) ? "–" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3);
}
