// Wires the panels to the server: state and graph over HTTP, logits and toggles over the WebSocket.

import { api } from "./api.js";
import { BarChart } from "./bars.js";
import { exportJson, exportSvg } from "./export.js";
import { FeaturePanel } from "./features.js";
import { GraphView } from "./graph.js";
import { buildModel } from "./graph_model.js";
import { PatchList } from "./patches.js";
import { Socket } from "./socket.js";
import { readState, writeState } from "./url_state.js";

const $ = (id) => document.getElementById(id);
const initial = readState();
let target = initial.target;
let prompt = "";
let graphFromServer = false;  // a loaded file's features belong to another model: no feature card for them

function showError(line) {
  console.warn(`tuiwb: ${line}`);
  const div = document.createElement("div");
  div.textContent = line;
  $("errors").appendChild(div);
  setTimeout(() => div.remove(), 6000);
}

const saveUrl = () => writeState({ selected: graph.selected, pinned: graph.pinned, threshold: graph.threshold, target });

const features = new FeaturePanel({
  form: $("search-form"), layerSelect: $("search-layer"), query: $("search-q"), results: $("search-results"),
  more: $("search-more"), cardPanel: $("card-panel"), card: $("card"), onError: showError,
  onGraph: (layer, feature) => {
    target = { layer, feature };
    graph.selected = null;
    graph.pinned.clear();
    saveUrl();
    loadProvenance();
  },
  onAblate: async (layer, id) => {
    try {
      await api.addPatch({ layer, features: [id], mode: "ablate" });
      patches.render((await api.state()).patches);
    } catch (e) { showError(e.message); }
  },
});

const graph = new GraphView($("graph"), {
  tooltip: $("tooltip"), pruneInput: $("prune"), pruneLabel: $("prune-label"), note: $("graph-note"),
  onChange: saveUrl,
  onSelect: (n) => {
    if (n && graphFromServer && n.kind === "feature" && Number.isFinite(n.layer) && n.layer >= 0 && Number.isFinite(n.feature)) {
      features.open(n.layer, n.feature);
    }
  },
});

const bars = new BarChart($("bars"), $("kl"));
const patches = new PatchList($("patches"), {
  onToggle: (name, on, clickMs) => socket.send({ type: "toggle", patch: name, on }, clickMs),
  onRemove: async (name) => {
    try {
      await api.removePatch(name);
      patches.render((await api.state()).patches);
    } catch (e) { showError(e.message); }
  },
});

const socket = new Socket({
  onHello: (msg) => { if (msg.state) applyState(msg.state, false); },
  onLogits: (msg) => {
    bars.paint(msg.top || [], msg.kl, msg.base_top);
    if (msg.patches) patches.render(msg.patches);
    if (typeof msg.prompt === "string" && document.activeElement !== $("prompt")) $("prompt").value = msg.prompt;
  },
  onError: showError,
  onStatus: (live) => { $("conn").textContent = live ? "live" : "offline"; $("conn").classList.toggle("live", live); },
});

function applyState(state, first) {
  // A local checkpoint's id is its path: its last part says enough, the tooltip has the rest.
  $("model").textContent = `${String(state.model).split("/").filter(Boolean).pop()} · ${state.n_layers} layers`;
  $("model").title = state.model;
  patches.render(state.patches || []);
  if (first) {
    prompt = state.prompt || "";
    $("prompt").value = prompt;
    features.setLayers(state.layers || [], (target || state.target || {}).layer ?? (state.layers || [])[0]);
  }
}

function showGraph(json, title) {
  const model = buildModel(json);
  graph.setModel(model);
  $("graph-title").textContent = title;
  const notes = (json.tuiwb && json.tuiwb.meta && json.tuiwb.meta.notes) || [];
  $("graph-note").textContent = notes.join(" · ");
  document.body.dataset.graphNodes = String(model.nodes.length);
}

async function loadProvenance() {
  if (!target) { $("graph-note").textContent = "no target feature: pick one in the feature search"; return; }
  $("graph-note").textContent = "computing provenance…";
  try {
    const json = await api.provenance({ layer: target.layer, feature: target.feature, prompt: prompt || undefined });
    graphFromServer = true;
    showGraph(json, `L${target.layer} F${target.feature}${prompt ? ` on ${JSON.stringify(prompt)}` : ""}`);
  } catch (e) { $("graph-note").textContent = ""; showError(e.message); }
}

async function loadGraphFile(file) {
  try {
    const json = JSON.parse(await file.text());
    graphFromServer = false;
    showGraph(json, `file ${file.name}`);
    target = null;
    saveUrl();
  } catch (e) { showError(`${file.name}: ${e.message}`); }
}

$("graph-file").addEventListener("change", (ev) => { if (ev.target.files[0]) loadGraphFile(ev.target.files[0]); });
$("graph-wrap").addEventListener("dragover", (ev) => ev.preventDefault());
$("graph-wrap").addEventListener("drop", (ev) => {
  ev.preventDefault();
  if (ev.dataTransfer.files[0]) loadGraphFile(ev.dataTransfer.files[0]);
});
$("export-json").addEventListener("click", () => graph.model && exportJson(graph.model, graph));
$("export-svg").addEventListener("click", () => graph.model && exportSvg($("graph"), graph.model));
$("prompt-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  prompt = $("prompt").value;
  socket.send({ type: "prompt", text: prompt });
  loadProvenance();
});
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape") { graph.clear(); $("prompt").blur(); }
});
// Ctrl/Cmd+F style shortcut for the search: "/" focuses it (as in the TUI).
document.addEventListener("keydown", (ev) => {
  if (ev.key === "/" && !["INPUT", "SELECT"].includes(document.activeElement.tagName)) { ev.preventDefault(); $("search-q").focus(); }
});

async function start() {
  try {
    const state = await api.state();
    target = target || state.target || null;
    applyState(state, true);
    graph.pinned = new Set(initial.pinned);
    graph.selected = initial.selected;
    graph.threshold = initial.threshold;
    $("prune").value = String(initial.threshold);
    const first = api.logits(prompt).then((r) => bars.paint(r.top || [], r.kl, r.base_top)).catch((e) => showError(e.message));
    await Promise.all([first, loadProvenance(), features.search()]);
    if (graph.selected && graph.model && graph.model.byId.has(graph.selected)) graph.select(graph.selected);
    saveUrl();
    document.body.dataset.ready = "1";
  } catch (e) { showError(e.message); }
}

start();
