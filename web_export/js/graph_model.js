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

/** A tuiwb ProvenanceGraph.to_json() in circuit-tracer's schema (the same mapping the server's view makes). */
export function fromTuiwb(g) {
  const typeOf = { feature: "cross layer transcoder", error: "mlp reconstruction error", embedding: "embedding" };
  const nodes = g.nodes.map((n) => ({
    node_id: n.id, jsNodeId: n.id, feature: n.feature ?? -1,
    layer: n.kind === "embedding" ? "E" : String(n.layer), ctx_idx: n.position ?? 0,
    feature_type: typeOf[n.kind] || "cross layer transcoder", clerp: n.label || "",
    influence: null, activation: n.activation,
  }));
  const meta = g.meta || {};
  return {
    metadata: { slug: "tuiwb", scan: "tuiwb", prompt: meta.prompt || "", prompt_tokens: meta.tokens || [],
      schema_version: 1, info: { method: meta.method }, pruning_settings: { top: meta.top, threshold: meta.threshold } },
    qParams: { pinnedIds: [], supernodes: [], linkType: "both", clickedId: "" },
    nodes, links: g.edges.map((e) => ({ source: e.source, target: e.target, weight: e.weight })),
    tuiwb: { root: g.root, nodes: g.nodes, meta },
  };
}

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

/**
 * The drawable graph: {nodes, links, root, bands, tokens, ct}. Node: {id, kind, layer, band, pos, feature,
 * label, token, activation, size, topTokens}. `size` is |influence| when the file has it, else the largest
 * |weight| of the node's edges (the root gets the largest size of all).
 */
export function buildModel(json) {
  const ct = toCircuitTracer(json);
  const tokens = (ct.metadata && ct.metadata.prompt_tokens) || [];
  const extras = new Map(((ct.tuiwb && ct.tuiwb.nodes) || []).map((n) => [n.id, n]));
  const nodes = ct.nodes.map((n) => {
    const kind = nodeKind(n.feature_type);
    const x = extras.get(n.node_id) || {};
    // tuiwb's error nodes have no position (one per layer); its extras say so, ctx_idx cannot.
    const pos = "position" in x ? x.position : (Number.isFinite(n.ctx_idx) ? n.ctx_idx : null);
    return {
      id: String(n.node_id), kind, layer: kind === "logit" ? Infinity : layerOf(n, kind), pos,
      feature: n.feature, label: n.clerp || x.label || "", activation: n.activation ?? x.activation ?? null,
      token: x.token ?? (pos !== null && pos < tokens.length ? tokens[pos] : null),
      influence: n.influence ?? null, topTokens: x.top_tokens || null, size: 0,
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
  const root = pickRoot(ct, nodes, links, byId);
  if (root) root.size = Math.max(root.size, ...nodes.map((n) => n.size));
  // Bands bottom-up: embeddings, layers in order, logits on top.
  const layers = [...new Set(nodes.map((n) => n.layer))].sort((a, b) => a - b);
  const bandOf = new Map(layers.map((l, i) => [l, i]));
  for (const n of nodes) n.band = bandOf.get(n.layer);
  return { nodes, links, root, bands: layers, tokens, ct, byId };
}

function pickRoot(ct, nodes, links, byId) {
  const named = ct.tuiwb && ct.tuiwb.root;
  if (named && byId.has(String(named))) return byId.get(String(named));
  const target = ct.nodes.find((n) => n.is_target_logit);
  if (target) return byId.get(String(target.node_id));
  // Otherwise the highest sink: links point downstream, so the explained node has no outgoing link.
  const hasOut = new Set(links.map((l) => l.source.id));
  const sinks = nodes.filter((n) => !hasOut.has(n.id));
  return (sinks.length ? sinks : nodes).reduce((a, b) => (b.layer > a.layer ? b : a), (sinks.length ? sinks : nodes)[0]);
}

/** Short human name of a node ("L1 F23 @4", "L0 error", "emb 'the' @2"). */
export function nodeName(n) {
  const at = n.pos !== null ? ` @${n.pos}` : "";
  if (n.kind === "embedding") return `emb ${JSON.stringify(n.token ?? "")}${at}`;
  if (n.kind === "error") return `L${n.layer} SAE error${at}`;
  if (n.kind === "logit") return `logit ${n.label || n.feature}`;
  return `L${n.layer} F${n.feature}${at}`;
}
