"""Provenance: where does a feature come from? An upstream attribution graph, two or more layers deep.

**With a prompt** (:func:`build_graph`): the target is feature f of the SAE at layer L at position p
(default: the last token). Level 1 attributes it to every (position ≤ p, feature) of the SAE at
layer L−1 plus that SAE's reconstruction error (:mod:`tuiwb.provenance_attr`: activation × gradient
through the real model with the norms' denominators frozen, or Integrated Gradients with
``method="ig"``); the ``top`` children with |attribution| > ``threshold`` are kept, and each kept
feature is explained the same way by layer L−2, and so on for ``depth`` levels (breadth first; all
targets of a level share one batched forward/backward). Every expanded node gets an edge from its
upstream layer's **error node**, kept whatever its size, so the mass the SAE does not explain stays
visible. A level below layer 0 is the **token embeddings** (one node per position, no error node):
a model that moves information between positions in block 0 — the demo model moves its trigger to
the sentence's last token there — shows where it came from only at that level.

**Without a prompt** (:func:`static_graph`): virtual weights ``W_enc[:, f] · W_dec[g]`` between the
SAEs of adjacent layers — the direct residual path only, no error node, no positions.

**The graph** (:class:`ProvenanceGraph`) is what the TUI renders as a tree
(:mod:`tuiwb.provenance_render`), ``tuiwb provenance --json`` prints and the companion draws as a
force graph: ``{"nodes": [...], "edges": [...], "root": id, "meta": {...}}``.

* Node ids: ``L{layer}/F{feature}`` for a feature, ``L{layer}/err`` for a layer's SAE error (one per
  layer, shared by the nodes it feeds, one edge each), ``emb@{pos}`` for a token embedding (layer
  −1, ``feature`` = the token id). When the same feature is kept at *several* positions of a prompt,
  every one of its nodes is suffixed with its position, ``L{layer}/F{feature}@{pos}`` (never a mix
  of suffixed and bare ids for one feature); ``position`` always holds the position.
* Edges point downstream: ``source`` is the upstream node, ``target`` the node it explains;
  ``weight`` is the *local* attribution of source to target's activation (not multiplied along
  paths). A feature kept under several parents is one node with several edges, expanded once.
* Expanded nodes record ``attr_features`` (Σ of *all* their upstream feature attributions, pruned
  ones included) and, for IG, ``baseline``; with the error edge, ``attr_features + error ≈
  activation − baseline`` (completeness).

Labels are a feature's top tokens when feature stats are given (``tuiwb.features.FeatureStats``
per layer), else the token at the node's position.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import torch

from tuiwb.errors import TuiwbError
from tuiwb.provenance.attribution import EMBED, METHODS, Target, attribute, real_run, sae_code
from tuiwb.provenance.render import render_ascii, render_tree, tree_lines

ERROR_LABEL = "SAE error"


@dataclass(frozen=True)
class Node:
    """A feature at a position, a layer's SAE error or a token embedding, in the provenance graph."""

    id: str
    """``L{layer}/F{feature}``, ``L{layer}/F{feature}@{pos}``, ``L{layer}/err`` or ``emb@{pos}`` (see the
    module docstring)."""
    layer: int
    """Layer of the SAE the node belongs to; -1 for a token embedding."""
    feature: int | None
    """Feature id; the token id for an embedding node; None for an error node."""
    position: int | None
    """Token position (0 = BOS); None for error nodes and in the static view."""
    token: str | None
    """The prompt's token at ``position``; None without a position."""
    activation: float | None
    """Feature activation at ``position``; for an error node the L2 norm of the SAE error over the
    positions in play; for an embedding node its L2 norm; None in the static view."""
    label: str
    """Top tokens of the feature (with stats), else ``token``; "SAE error" for error nodes."""
    kind: str = "feature"
    """``"feature"``, ``"error"`` or ``"embedding"``."""
    level: int = 0
    """Distance from the root (0 = the target feature)."""
    attr_features: float | None = None
    """Expanded nodes: Σ of the attributions of *all* upstream features (before pruning)."""
    baseline: float | None = None
    """Expanded nodes, IG only: the activation with the upstream baseline spliced in."""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Edge:
    """``source`` (upstream) contributes ``weight`` to ``target``'s activation."""

    source: str
    """Upstream node id."""
    target: str
    """Downstream node id."""
    weight: float
    """Attribution (grad × act, IG) or virtual weight (static view)."""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class ProvenanceGraph:
    """Nodes and edges of one provenance query, plus what was asked."""

    nodes: tuple[Node, ...]
    """Root first, then breadth-first."""
    edges: tuple[Edge, ...]
    """Upstream → downstream attributions."""
    root: str
    """Id of the target node."""
    method: str
    """``"grad"``, ``"ig"`` or ``"static"``."""
    prompt: str | None = None
    """The prompt (None in the static view)."""
    tokens: tuple[str, ...] = ()
    """The prompt's tokens, BOS included."""
    depth: int = 2
    """Levels requested."""
    top: int = 5
    """Children kept per node."""
    threshold: float = 0.0
    """Children need |weight| above this."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Things worth telling the user (e.g. the target does not fire)."""

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def children(self, node_id: str) -> list[tuple[Edge, Node]]:
        """Upstream nodes feeding ``node_id``: features by |weight| (largest first), then the error node."""
        by_id = {n.id: n for n in self.nodes}
        kids = [(e, by_id[e.source]) for e in self.edges if e.target == node_id]
        return sorted(kids, key=lambda en: (en[1].kind == "error", -abs(en[0].weight)))

    def to_json(self) -> dict:
        meta = {"method": self.method, "prompt": self.prompt, "tokens": list(self.tokens), "depth": self.depth,
                "top": self.top, "threshold": self.threshold, "notes": list(self.notes)}
        return {"nodes": [n.to_json() for n in self.nodes], "edges": [e.to_json() for e in self.edges],
                "root": self.root, "meta": meta}

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict) -> "ProvenanceGraph":
        """The inverse of :meth:`to_json` (a ``tuiwb provenance --json`` file read back)."""
        try:
            meta = data.get("meta", {})
            graph = cls(nodes=tuple(Node(**n) for n in data["nodes"]), edges=tuple(Edge(**e) for e in data["edges"]),
                        root=data["root"], method=meta.get("method", "grad"), prompt=meta.get("prompt"),
                        tokens=tuple(meta.get("tokens", ())), depth=meta.get("depth", 0), top=meta.get("top", 0),
                        threshold=meta.get("threshold", 0.0), notes=tuple(meta.get("notes", ())))
        except (KeyError, TypeError, AttributeError) as e:
            raise TuiwbError(f"not a tuiwb provenance graph: {e}") from None
        ids = {n.id for n in graph.nodes}
        dangling = [x for x in [graph.root, *(e.source for e in graph.edges), *(e.target for e in graph.edges)]
                    if x not in ids]
        if dangling:
            raise TuiwbError(f"not a tuiwb provenance graph: node {dangling[0]!r} is referenced but not listed")
        return graph

    def to_ascii(self) -> str:
        """The tree as plain text (what the TUI pane shows)."""
        return render_ascii(self)


# ---------------------------------------------------------------------------------------- checks
def _check_sae(saes: Mapping[int, object], layer: int, role: str) -> None:
    if layer not in saes:
        have = ", ".join(str(k) for k in sorted(saes)) or "none"
        raise TuiwbError(f"no SAE at {role} layer {layer} (SAEs exist at layers: {have}): train one for "
                         f"layer {layer} or pick another `layer` or `depth`")


def check_request(n_layers: int, saes: Mapping[int, object], layer: int, feature: int, depth: int, top: int,
                  threshold: float = 0.0, method: str = "grad", steps: int = 32, embeddings: bool = True) -> None:
    """Raise a one-line ``TuiwbError`` for anything wrong with a provenance query (``embeddings``: a
    level below layer 0 may be the token embeddings — prompt mode only)."""
    if not 0 <= layer < n_layers:
        raise TuiwbError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    if depth < 1:
        raise TuiwbError("`depth` must be at least 1")
    if top < 1:
        raise TuiwbError("`top` must be at least 1")
    if not threshold >= 0:
        raise TuiwbError("`threshold` must be a number ≥ 0")
    if method not in METHODS:
        raise TuiwbError(f"`method` must be one of {', '.join(METHODS)}, not {method!r}")
    if steps < 1:
        raise TuiwbError("`steps` must be at least 1")
    _check_sae(saes, layer, "the target")
    lowest = -1 if embeddings else 0
    if layer - depth < lowest:
        most = layer - lowest
        where = "the token embeddings" if embeddings else "layer 0"
        raise TuiwbError(f"depth {depth} from layer {layer} goes past {where}: use `depth={most}` or less"
                         if most else "layer 0 has no SAE layer upstream of it: give a `prompt` to attribute "
                         "to the token embeddings, or pick a later `layer`")
    for up in range(layer - 1, max(layer - depth, 0) - 1, -1):
        _check_sae(saes, up, "upstream")
    d_sae = int(saes[layer].W_dec.shape[0])
    if not 0 <= feature < d_sae:
        raise TuiwbError(f"feature {feature} does not exist: the SAE at layer {layer} has features 0..{d_sae - 1}")


def resolve_pos(pos: int | None, n_tokens: int) -> int:
    """``None`` → last token; negative counts from the end; out of range → ``TuiwbError``."""
    if pos is None:
        return n_tokens - 1
    p = pos + n_tokens if pos < 0 else pos
    if not 0 <= p < n_tokens:
        raise TuiwbError(f"position {pos} is out of range: the prompt has {n_tokens} tokens "
                         f"(positions 0..{n_tokens - 1}, or -1 for the last)")
    return p


# ---------------------------------------------------------------------------------------- labels
def _label(stats, layer: int, feature: int | None, token: str | None) -> str:
    st = (stats or {}).get(layer)
    if st is not None and feature is not None and 0 <= feature < st.d_sae:
        words = [t.token.strip() or repr(t.token) for t in st.top_tokens(feature, 3)]
        if words:
            return ", ".join(words)
    return token if token is not None else ""


# ------------------------------------------------------------------------------------ the graphs
def _assign_ids(keys) -> dict:
    """Internal node keys → public ids (``@pos`` only for features kept at several positions)."""
    positions: dict[tuple[int, int], set] = {}
    for k in keys:
        if k[1] is not None and k[0] != EMBED:
            positions.setdefault((k[0], k[1]), set()).add(k[2])
    ids = {}
    for k in keys:
        layer, feat, pos = k
        if layer == EMBED:
            ids[k] = f"emb@{pos}"
        elif feat is None:
            ids[k] = f"L{layer}/err"
        elif len(positions[(layer, feat)]) > 1:
            ids[k] = f"L{layer}/F{feat}@{pos}"
        else:
            ids[k] = f"L{layer}/F{feat}"
    return ids


def _top_children(scores: torch.Tensor, top: int, threshold: float) -> list[tuple[int, int, float]]:
    """``(pos, feature, weight)`` of the ``top`` largest |scores| ``[pos, d_sae]`` above ``threshold``."""
    flat = scores.reshape(-1)
    k = min(top, flat.numel())
    vals, idx = flat.abs().topk(k)
    d_sae = scores.shape[-1]
    return [(int(i) // d_sae, int(i) % d_sae, float(flat[i])) for v, i in zip(vals, idx)
            if float(v) > threshold]


def build_graph(loaded, saes: Mapping[int, object], layer: int, feature: int, prompt: str | None = None, *,
                ids: Sequence[int] | None = None, pos: int | None = None, depth: int = 2, top: int = 5,
                threshold: float = 0.0, method: str = "grad", steps: int = 32, stats: Mapping | None = None,
                fixed_bos: bool = True, freeze_norms: bool = True) -> ProvenanceGraph:
    """The upstream attribution graph of ``feature`` (SAE at ``layer``) on ``prompt`` (or token ``ids``).

    With neither a prompt nor ids this is the static view (:func:`static_graph`). ``fixed_bos``
    keeps position 0 out of the attribution when it is the BOS token; ``freeze_norms`` freezes the
    norms' denominators (both explained in ``tuiwb.provenance_attr``).
    """
    if prompt is None and ids is None:
        if pos is not None:
            raise TuiwbError("`pos` needs a `prompt` (the static view has no positions)")
        return static_graph(saes, layer, feature, depth=depth, top=top, threshold=threshold, stats=stats,
                            n_layers=loaded.n_layers)
    check_request(loaded.n_layers, saes, layer, feature, depth, top, threshold, method, steps)
    ids = list(ids) if ids is not None else loaded.encode(prompt)
    p = resolve_pos(pos, len(ids))
    tokens = tuple(loaded.token_str(i) for i in ids)
    bos = getattr(loaded.tokenizer, "bos_token_id", None)
    fixed = (0,) if fixed_bos and bos is not None and ids[0] == bos else ()
    layers = list(range(layer - depth, layer + 1))
    run = real_run(loaded, ids, layers, freeze_norms)  # residuals {layer: [T, d]} (+ norm denominators)
    codes = {L: sae_code(saes[L], run.resid[L]) for L in layers if L != EMBED}  # {layer: (acts, err)}

    root = (layer, feature, p)
    info: dict[tuple, dict] = {root: _feature_info(codes, stats, tokens, root, level=0)}
    edges: list[tuple[tuple, tuple, float]] = []
    notes = []
    if info[root]["activation"] == 0.0:
        notes.append(f"feature {feature} does not fire at position {p} ({tokens[p]!r}): every attribution is 0")
    frontier = [root]
    for level in range(1, depth + 1):
        if not frontier:
            break
        up = layer - level
        attrs = attribute(loaded, saes, ids, up + 1, [Target(f, q) for _, f, q in frontier], up,
                          method=method, steps=steps, fixed=fixed, freeze_norms=freeze_norms, run=run)
        err_key = (up, None, None)
        nxt = []
        for key, a in zip(frontier, attrs):
            info[key]["attr_features"] = float(a.features.sum())
            info[key]["baseline"] = a.baseline
            for q, g, w in _top_children(a.features, top, threshold):
                if up == EMBED:
                    child = (EMBED, int(ids[q]), q)
                    info.setdefault(child, dict(layer=EMBED, feature=int(ids[q]), position=q, token=tokens[q],
                                                kind="embedding", level=level, label=tokens[q],
                                                activation=float(run.resid[EMBED][q].norm())))
                    edges.append((child, key, w))
                    continue
                child = (up, g, q)
                if child not in info:
                    info[child] = _feature_info(codes, stats, tokens, child, level)
                    nxt.append(child)
                edges.append((child, key, w))
            if up == EMBED:
                continue  # the embeddings are the input itself: nothing left unexplained
            if err_key not in info:
                err = codes[up][1][: p + 1]  # [≤p, d]
                keep = [q for q in range(p + 1) if q not in fixed]
                info[err_key] = dict(layer=up, feature=None, position=None, token=None, kind="error", level=level,
                                     activation=float(err[keep].norm()) if keep else 0.0, label=ERROR_LABEL)
            edges.append((err_key, key, float(a.error.sum())))
        frontier = nxt

    names = _assign_ids(info)
    nodes = tuple(Node(id=names[k], **v) for k, v in info.items())
    return ProvenanceGraph(nodes=nodes, edges=tuple(Edge(names[s], names[t], w) for s, t, w in edges),
                           root=names[root], method=method, prompt=prompt, tokens=tokens, depth=depth, top=top,
                           threshold=threshold, notes=tuple(notes))


def _feature_info(codes, stats, tokens, key, level) -> dict:
    layer, f, q = key
    return dict(layer=layer, feature=f, position=q, token=tokens[q], kind="feature", level=level,
                activation=float(codes[layer][0][q, f]), label=_label(stats, layer, f, tokens[q]))


def static_graph(saes: Mapping[int, object], layer: int, feature: int, *, depth: int = 2, top: int = 5,
                 threshold: float = 0.0, stats: Mapping | None = None, n_layers: int | None = None) -> ProvenanceGraph:
    """Prompt-free view: children of (L, f) are the features g of L−1 with the largest
    |W_enc_L[:, f] · W_dec_{L−1}[g]| (the direct residual path), recursively."""
    n_layers = n_layers if n_layers is not None else max(saes) + 1
    check_request(n_layers, saes, layer, feature, depth, top, threshold, embeddings=False)
    root = (layer, feature, None)
    info = {root: dict(layer=layer, feature=feature, position=None, token=None, activation=None,
                       label=_label(stats, layer, feature, None), level=0)}
    edges = []
    frontier = [root]
    for level in range(1, depth + 1):
        up = layer - level
        if not frontier:
            break
        enc = saes[up + 1].W_enc.detach()[:, [f for _, f, _ in frontier]].float()  # [d_in, K]
        virt = enc.t() @ saes[up].W_dec.detach().float().t()  # [K, d_sae_up]
        nxt = []
        for key, row in zip(frontier, virt):
            for _, g, w in _top_children(row.unsqueeze(0), top, threshold):
                child = (up, g, None)
                if child not in info:
                    info[child] = dict(layer=up, feature=g, position=None, token=None, activation=None,
                                       label=_label(stats, up, g, None), level=level)
                    nxt.append(child)
                edges.append((child, key, w))
        frontier = nxt
    names = _assign_ids(info)
    nodes = tuple(Node(id=names[k], **v) for k, v in info.items())
    return ProvenanceGraph(nodes=nodes, edges=tuple(Edge(names[s], names[t], w) for s, t, w in edges),
                           root=names[root], method="static", depth=depth, top=top, threshold=threshold)


__all__ = ["Node", "Edge", "ProvenanceGraph", "Target", "build_graph", "static_graph", 
           "check_request", "resolve_pos", "render_ascii", "render_tree", "tree_lines",
           "attribute"]
