// The one graph model the page draws: built from circuit-tracer's graph JSON (what
// /api/provenance?format=circuit-tracer serves and what circuit-tracer itself writes), reading
// tuiwb's extras from its `tuiwb` key when present. A tuiwb-format graph ({nodes, edges, root, meta})
// is first turned into that schema, so one code path renders everything.

const EMBEDDING = -1;

/** Kind of a node from circuit-tracer's `feature_type` ("cross layer transcoder", "mlp reconstruction error", ...). */
export function nodeKind(featureType) {
  const t = String(featureType || "").toLowerCase();
  if (t.includes("error")) return "error";
  if (t.includes("embedding")) return "embedding";
  if (t.includes("logit")) return "logit";
  return "feature";
}

/**
 * A tuiwb ProvenanceGraph.to_json() in circuit-tracer's schema, the way tuiwb.provenance.circuit_tracer
 * writes it (node ids `L_f_p`, `L_-1_p`, `E_tok_p`; tuiwb's own fields under each node's `tuiwb` key).
 */
export function fromTuiwb(g) {
  const meta = g.meta || {};
  const root = g.nodes.find((n) => n.id === g.root) || g.nodes[0] || {};
  const posOf = (n) => (n.position ?? (n.kind === "error" ? root.position ?? 0 : 0));
  const idOf = (n) => (n.kind === "embedding" ? `E_${n.feature}_${posOf(n)}` : n.kind === "error"
    ? `${n.layer}_-1_${posOf(n)}` : `${n.layer}_${n.feature}_${posOf(n)}`);
  const names = new Map(g.nodes.map((n) => [n.id, idOf(n)]));
  const out = new Map(), nodes = [];
  for (const e of g.edges) out.set(e.source, (out.get(e.source) || 0) + Math.abs(e.weight));
  const top = Math.max(0, ...out.values()) || 1;
  for (const n of g.nodes) {
    nodes.push({ node_id: names.get(n.id), jsNodeId: names.get(n.id), feature: n.feature ?? -1,
      layer: n.kind === "embedding" ? "E" : String(n.layer), ctx_idx: posOf(n),
      feature_type: TYPES[n.kind] || TYPES.feature, clerp: n.label || "",
      influence: n.id === g.root ? 1 : (out.get(n.id) || 0) / top, activation: n.activation, tuiwb: n });
  }
  return {
    metadata: { slug: "tuiwb", scan: "tuiwb", transcoder_list: [], prompt: meta.prompt || "",
      prompt_tokens: meta.tokens || [], schema_version: 1, info: {}, pruning_settings: { node_threshold: meta.threshold } },
    qParams: { pinnedIds: [], supernodes: [], linkType: "both", clickedId: names.get(g.root) || "", sg_pos: "" },
    nodes, links: g.edges.map((e) => ({ source: names.get(e.source), target: names.get(e.target), weight: e.weight })),
    tuiwb: { ...meta, root: g.root },
  };
}

const TYPES = { feature: "cross layer transcoder", error: "mlp reconstruction error", embedding: "embedding", logit: "logit" };

/** Accept either schema; throw one line saying what is wrong otherwise. */
export function toCircuitTracer(json) {
  if (json && Array.isArray(json.nodes) && Array.isArray(json.links)) return json;
  if (json && Array.isArray(json.nodes) && Array.isArray(json.edges)) return fromTuiwb(json);
  throw new Error("not a graph: expected circuit-tracer JSON with `nodes` and `links`");
}

function layerOf(n, kind) {
  if (kind === "embedding" || n.layer === "E") return EMBEDDING;
  const l = parseInt(n.layer, 10);
  return Number.isFinite(l) ? l : 0;
}

/** The per-layer feature index: circuit-tracer's `feature` may be a global number, its node_id is `layer_index_pos`. */
function indexOf(n, kind) {
  if (kind === "error") return null;
  const parts = String(n.node_id).split("_");
  const idx = parts.length === 3 ? parseInt(parts[1], 10) : NaN;
  return Number.isFinite(idx) ? idx : n.feature;
}

/**
 * The drawable graph: {nodes, links, root, bands, tokens, ct, byId}. Node: {id (circuit-tracer node_id),
 * kind, layer, band, pos, feature (per-layer index), label, token, activation, size}. `size` is |influence|
 * when the file has it, else the largest |weight| of the node's edges (the root gets the largest of all).
 * tuiwb's own fields (a node's `tuiwb` object) win over what the schema can say.
 */
export function buildModel(json) {
  const ct = toCircuitTracer(json);
  const tokens = (ct.metadata && ct.metadata.prompt_tokens) || [];
  const nodes = ct.nodes.map((n) => {
    const x = n.tuiwb || {};
    const kind = x.kind || nodeKind(n.feature_type);
    // tuiwb's error nodes have no position (one per layer); its own fields say so, ctx_idx cannot.
    const pos = "position" in x ? x.position : (Number.isFinite(n.ctx_idx) ? n.ctx_idx : null);
    return {
      id: String(n.node_id), native: x.id ?? null, kind,
      layer: kind === "logit" ? Infinity : (Number.isFinite(x.layer) ? x.layer : layerOf(n, kind)),
      pos, feature: "feature" in x ? x.feature : indexOf(n, kind), label: x.label || n.clerp || "",
      activation: n.activation ?? null,
      token: x.token ?? (pos !== null && pos >= 0 && pos < tokens.length ? tokens[pos] : null),
      influence: n.influence ?? null, size: 0,
    };
  });
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const links = [];
  for (const l of ct.links || []) {
    const s = byId.get(String(l.source)), t = byId.get(String(l.target));
    if (s && t) links.push({ source: s, target: t, weight: Number(l.weight) || 0 });
  }
  for (const l of links) {
    const w = Math.abs(l.weight);
    l.source.size = Math.max(l.source.size, w);
    l.target.size = Math.max(l.target.size, w);
  }
  for (const n of nodes) if (n.influence !== null && Number.isFinite(n.influence)) n.size = Math.abs(n.influence);
  const root = pickRoot(ct, nodes, links);
  if (root) root.size = Math.max(root.size, ...nodes.map((n) => n.size));
  // Bands bottom-up: embeddings, layers in order, logits on top.
  const layers = [...new Set(nodes.map((n) => n.layer))].sort((a, b) => a - b);
  const bandOf = new Map(layers.map((l, i) => [l, i]));
  for (const n of nodes) n.band = bandOf.get(n.layer);
  return { nodes, links, root, bands: layers, tokens, ct, byId };
}

function pickRoot(ct, nodes, links) {
  const named = ct.tuiwb && ct.tuiwb.root;  // tuiwb's own id of the target feature
  const own = named !== undefined && nodes.find((n) => n.native === named);
  if (own) return own;
  const target = ct.nodes.findIndex((n) => n.is_target_logit);
  if (target >= 0) return nodes[target];
  // Otherwise the highest sink: links point downstream, so the explained node has no outgoing link.
  const hasOut = new Set(links.map((l) => l.source.id));
  const sinks = nodes.filter((n) => !hasOut.has(n.id));
  const pool = sinks.length ? sinks : nodes;
  return pool.reduce((a, b) => (b.layer > a.layer ? b : a), pool[0]);
}

/** Short human name of a node ("L1 F23 @4", "L0 error", "emb 'the' @2"). */
export function nodeName(n) {
  const at = n.pos !== null ? ` @${n.pos}` : "";
  if (n.kind === "embedding") return `emb ${JSON.stringify(n.token ?? "")}${at}`;
  if (n.kind === "error") return `L${n.layer} SAE error${at}`;
  if (n.kind === "logit") return `logit ${n.label || n.feature}`;
  return `L${n.layer} F${n.feature}${at}`;
}
