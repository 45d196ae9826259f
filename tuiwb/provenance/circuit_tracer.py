"""circuit-tracer's graph JSON, both ways: write a provenance graph in its schema, read its files back.

circuit-tracer (safety-research) stores an attribution graph as ``{"metadata", "qParams", "nodes",
"links"}``, and its viewer (and Neuronpedia's) reads that file. :func:`to_circuit_tracer` writes a
*superset* of that schema, so a tuiwb graph opens in those viewers and tuiwb's own fields ride along:
every node carries a ``tuiwb`` object (its native id, layer, feature, position, kind, token, label)
and so does the top level (root, method, depth, ...). :func:`from_circuit_tracer` reads a file that
circuit-tracer wrote, so ``tuiwb provenance --show FILE`` and the companion page draw it.

How tuiwb's graph maps onto the schema (node id conventions are circuit-tracer's):

==========================  ================================  ============================
tuiwb node                  ``node_id`` / ``jsNodeId``        ``feature_type``
==========================  ================================  ============================
feature f, layer L, pos p   ``L_f_p`` / ``L_f-0``             "cross layer transcoder"
SAE error of layer L        ``L_-1_p`` / ``L_-1-p``           "mlp reconstruction error"
token embedding at pos p    ``E_tokenid_p`` / ``E_tokenid-p``  "embedding"
==========================  ================================  ============================

``feature`` is circuit-tracer's global feature number (the Cantor pairing of layer and index, as its
own feature nodes use); the per-layer index is ``tuiwb.feature``. tuiwb's SAEs read the residual
stream, not an MLP, but circuit-tracer has one name for "what the dictionary does not explain" and
viewers key their styling on it. ``influence`` is the node's share of the largest |attribution| a
node passes downstream (the root is 1), which is what viewers size nodes by. In the static
(prompt-free) view positions are unknown: ``ctx_idx`` is 0 and ``tuiwb.position`` is null.

Messages here avoid backticks: the CLI renders backticked names as flags, and these are JSON keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tuiwb.errors import TuiwbError
from tuiwb.provenance.graph import Edge, Node, ProvenanceGraph

SCHEMA_VERSION = 1
"""circuit-tracer's ``metadata.schema_version`` this writer follows."""

FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                 "embedding": "embedding", "logit": "logit"}
"""tuiwb node kind → circuit-tracer ``feature_type``."""

KINDS = {v: k for k, v in FEATURE_TYPES.items()}
"""circuit-tracer ``feature_type`` → tuiwb node kind (types not listed read as features)."""

REQUIRED = {
    "metadata": ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt"),
    "qParams": ("pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"),
    "node": ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId"),
    "link": ("source", "target", "weight"),
}
"""The fields circuit-tracer's graph model declares without a default, per object."""


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _ids(node: Node, pos: int) -> tuple[str, str]:
    """(node_id, jsNodeId) in circuit-tracer's conventions."""
    if node.kind == "embedding":
        return f"E_{node.feature}_{pos}", f"E_{node.feature}-{pos}"
    if node.kind == "error":
        return f"{node.layer}_-1_{pos}", f"{node.layer}_-1-{pos}"
    # circuit-tracer gives a feature one jsNodeId at every position: viewers group its nodes by it.
    return f"{node.layer}_{node.feature}_{pos}", f"{node.layer}_{node.feature}-0"


def _influence(graph: ProvenanceGraph) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in graph.edges:
        out[e.source] = out.get(e.source, 0.0) + abs(e.weight)
    top = max(out.values(), default=0.0) or 1.0
    return {k: v / top for k, v in out.items()} | {graph.root: 1.0}


def to_circuit_tracer(graph: ProvenanceGraph, *, model: str = "", slug: str | None = None,
                      edge_threshold: float | None = None) -> dict:
    """``graph`` in circuit-tracer's schema, with tuiwb's own fields under ``tuiwb`` keys."""
    root = graph.node(graph.root)
    root_pos = root.position or 0
    influence = _influence(graph)
    names: dict[str, str] = {}
    nodes = []
    for n in graph.nodes:
        # One error node per layer in tuiwb (shared by the nodes it feeds); it sits at the root's position.
        pos = n.position if n.position is not None else root_pos if n.kind == "error" and graph.tokens else 0
        node_id, js_id = _ids(n, pos)
        names[n.id] = node_id
        feature = (_cantor(n.layer, n.feature) if n.kind == "feature" else
                   pos if n.kind == "embedding" else -1)
        nodes.append({
            "node_id": node_id, "feature": feature, "layer": "E" if n.kind == "embedding" else str(n.layer),
            "ctx_idx": pos, "feature_type": FEATURE_TYPES[n.kind], "jsNodeId": js_id,
            "clerp": n.label or "", "influence": influence.get(n.id, 0.0), "activation": n.activation,
            "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "tuiwb": {"id": n.id, "layer": n.layer, "feature": n.feature, "position": n.position, "kind": n.kind,
                      "token": n.token, "label": n.label, "level": n.level, "attr_features": n.attr_features,
                      "baseline": n.baseline},
        })
    links = [{"source": names[e.source], "target": names[e.target], "weight": e.weight} for e in graph.edges]
    slug = slug or f"tuiwb-L{root.layer}-F{root.feature}"
    metadata = {
        "slug": slug, "scan": model or "tuiwb", "transcoder_list": [], "prompt_tokens": list(graph.tokens),
        "prompt": graph.prompt or "", "node_threshold": graph.threshold, "schema_version": SCHEMA_VERSION,
        "info": {"creator_name": "tuiwb", "generator": {"name": "tuiwb", "version": _version()},
                 "create_time_ms": int(time.time() * 1000)},
        "pruning_settings": {"node_threshold": graph.threshold, "edge_threshold": edge_threshold,
                             "top_children": graph.top, "depth": graph.depth},
    }
    q_params = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": names[graph.root],
                "sg_pos": ""}
    native = {"root": graph.root, "method": graph.method, "depth": graph.depth, "top": graph.top,
              "threshold": graph.threshold, "notes": list(graph.notes), "prompt": graph.prompt}
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links, "tuiwb": native}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tuiwb")
    except PackageNotFoundError:
        return "unknown"


def schema_problems(data) -> list[str]:
    """What a file lacks to be a circuit-tracer graph (empty when it has every required field)."""
    if not isinstance(data, dict):
        return ["the top level is not a JSON object"]
    problems = []
    for key in ("metadata", "qParams"):
        obj = data.get(key)
        if not isinstance(obj, dict):
            problems.append(f"no {key} object")
            continue
        problems += [f"{key}.{f} is missing" for f in REQUIRED[key] if f not in obj]
    for key, kind in (("nodes", "node"), ("links", "link")):
        items = data.get(key)
        if not isinstance(items, list):
            problems.append(f"no {key} list")
            continue
        for i, item in enumerate(items):
            missing = [f for f in REQUIRED[kind] if not isinstance(item, dict) or f not in item]
            if missing:
                problems.append(f"{key}[{i}] lacks {', '.join(missing)}")
                break  # one broken item says enough
    return problems


def is_circuit_tracer(data) -> bool:
    return isinstance(data, dict) and "links" in data and "metadata" in data


def _layer(value: str, kind: str) -> int:
    if kind == "embedding" or value == "E":
        return -1
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TuiwbError(f"node layer {value!r} is neither a number nor 'E'") from None


def _index(node: dict, kind: str) -> int | None:
    """The per-layer feature index: circuit-tracer's ``node_id`` is ``layer_index_pos``; ``feature`` may be global."""
    if kind == "error":
        return None
    parts = str(node["node_id"]).split("_")
    if len(parts) == 3:
        try:
            return int(parts[1])
        except ValueError:
            pass
    return int(node["feature"])


def from_circuit_tracer(data: dict) -> ProvenanceGraph:
    """A graph from a circuit-tracer file (or one :func:`to_circuit_tracer` wrote)."""
    problems = schema_problems(data)
    if problems:
        raise TuiwbError(f"not a circuit-tracer graph: {problems[0]}")
    tokens = tuple(data["metadata"].get("prompt_tokens") or ())
    nodes, names = [], {}
    for raw in data["nodes"]:
        own = raw.get("tuiwb") or {}
        kind = own.get("kind") or KINDS.get(raw["feature_type"], "feature")
        pos = own.get("position", raw["ctx_idx"]) if own else raw["ctx_idx"]
        layer = own.get("layer", _layer(raw["layer"], kind)) if own else _layer(raw["layer"], kind)
        token = own.get("token") if own else (tokens[pos] if pos is not None and 0 <= pos < len(tokens) else None)
        node = Node(id=own.get("id") or raw["node_id"], layer=layer,
                    feature=own["feature"] if "feature" in own else _index(raw, kind),
                    position=pos, token=token, activation=raw.get("activation"),
                    label=own.get("label") or raw.get("clerp") or ("SAE error" if kind == "error" else token or ""),
                    kind=kind, level=own.get("level", 0), attr_features=own.get("attr_features"),
                    baseline=own.get("baseline"))
        names[raw["node_id"]] = node.id
        nodes.append(node)
    known = set(names)
    edges = tuple(Edge(names[ln["source"]], names[ln["target"]], float(ln["weight"]))
                  for ln in data["links"] if ln["source"] in known and ln["target"] in known)
    native = data.get("tuiwb") or {}
    root = native.get("root") or names.get(data["qParams"].get("clickedId")) or _target(data, names)
    if root is None:
        raise TuiwbError("the graph has no nodes")
    # Root first, as tuiwb's own graphs are ordered.
    nodes.sort(key=lambda n: n.id != root)
    meta = data["metadata"]
    return ProvenanceGraph(nodes=tuple(nodes), edges=edges, root=root, method=native.get("method", "circuit-tracer"),
                           prompt=native.get("prompt", meta.get("prompt")), tokens=tokens, depth=native.get("depth", 0),
                           top=native.get("top", 0), threshold=native.get("threshold", meta.get("node_threshold") or 0.0),
                           notes=tuple(native.get("notes", ())))


def _target(data: dict, names: dict[str, str]) -> str | None:
    """No clicked node: the most probable target logit, else the first node."""
    logits = [n for n in data["nodes"] if n.get("is_target_logit") or n.get("feature_type") == "logit"]
    if logits:
        return names[max(logits, key=lambda n: n.get("token_prob", 0.0))["node_id"]]
    return names[data["nodes"][0]["node_id"]] if data["nodes"] else None


def load_graph(path: str | Path) -> ProvenanceGraph:
    """A graph file in either format: circuit-tracer's, or tuiwb's own ``--json`` output."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuiwbError(f"graph file {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TuiwbError(f"graph file {path} is not JSON ({e}): give a provenance --json or circuit-tracer file") from None
    if is_circuit_tracer(data):
        return from_circuit_tracer(data)
    if isinstance(data, dict) and {"nodes", "edges", "root"} <= data.keys():
        return ProvenanceGraph.from_json(data)
    raise TuiwbError(f"graph file {path} is neither a tuiwb (nodes, edges, root) nor a circuit-tracer "
                     f"(metadata, nodes, links) graph")
