"""The provenance stage: which upstream features (and error nodes) a feature's activation comes from,
two or more layers deep; the graph, the attribution, and its ASCII rendering. Lazy until used."""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ProvenanceGraph": "graph", "build_graph": "graph", "static_graph": "graph", "attribute": "attribution",
    "render_ascii": "render", "render_tree": "render", "to_circuit_tracer": "circuit_tracer",
    "from_circuit_tracer": "circuit_tracer", "load_graph": "circuit_tracer",
})
