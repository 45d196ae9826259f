"""The JSON API (``/api/...``): thin handlers over the view adapter, shapes in ``payloads.py``.

Handlers are plain ``def``s: FastAPI runs them in its thread pool, so a forward (or a wait for the
Session's lock) never blocks the event loop that serves the WebSocket.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Sequence

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tuiwb.errors import TuiwbError
from tuiwb.server import payloads
from tuiwb.server.paths import inside_roots
from tuiwb.session.adapter import Lab
from tuiwb.session.query import SORTS, parse_query, query_mask, sorted_order

HTTP_ORIGIN = "http"
"""``Session.changes_from`` label of changes made through this API (broadcast as ``origin: "tui"``)."""
FORMATS = ("tuiwb", "circuit-tracer")
MAX_LIMIT = 500


class LogitsRequest(BaseModel):
    prompt: str | None = Field(None, description="text to predict from (default: the shared prompt); "
                                                 "does not change the shared prompt")


class PatchRequest(BaseModel):
    name: str | None = Field(None, description="patch name (letters, digits, _ and -; default from the features)")
    layer: int | None = Field(None, description="SAE layer of the features")
    features: list[int] = Field(default_factory=list, description="feature ids")
    mode: Literal["ablate", "scale"] = "ablate"
    alpha: float | None = Field(None, description="scale factor (mode scale)")
    on: bool = Field(False, description="enable it right away")
    lora: str | None = Field(None, description="attach this lora/NAME directory instead (inside the "
                                               "directories the server was started with)")


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def router(lab: Lab, *, roots: Sequence[Path], state_extra: dict) -> APIRouter:
    r = APIRouter(prefix="/api")
    session = lab.session

    def layer_or_default(layer: int | None) -> int:
        layers = lab.info().layers
        if layer is None:
            return layers[0]
        if layer not in layers:
            raise TuiwbError(f"no SAE at layer {layer}: `layer` must be one of {', '.join(map(str, layers))}")
        return layer

    @r.get("/state")
    def state() -> dict:
        """Model, layers with SAEs, patches with their on/off state, the shared prompt."""
        return payloads.state(lab, state_extra.get("target"))

    @r.get("/features")
    def features(layer: int | None = None, q: str = "", sort: str = "rank", offset: int = Query(0, ge=0),
                 limit: int = Query(50, ge=1, le=MAX_LIMIT)) -> dict:
        """One page of the layer's feature table, filtered with the TUI's ``/`` query language."""
        layer = layer_or_default(layer)
        if sort not in SORTS:
            raise TuiwbError(f"unknown `sort` {sort!r}: use one of {', '.join(SORTS)}")
        rows = lab.feature_rows(layer)
        order = sorted_order(rows, query_mask(rows, parse_query(q)), sort,
                             tuple(state_extra.get("ranked", {}).get(layer, ())))
        stats = lab.stats(layer)
        out = []
        for i in order[offset: offset + limit].tolist():
            f = int(rows.ids[i])
            row = {"id": f, "density": _num(rows.density[i]), "max": _num(rows.max_act[i]), "mean": None,
                   "top_tokens": [], "top_logits": []}
            if stats is not None:
                row["mean"] = _num(stats.mean_act[f])
                row["top_tokens"] = [lab.tokens.show(t.id) if t.id >= 0 else t.token for t in stats.top_tokens(f, 5)]
                row["top_logits"] = [lab.tokens.show(t.id) if t.id >= 0 else t.token for t in stats.top_logits(f, 5)]
            out.append(row)
        return {"layer": layer, "total": int(len(order)), "offset": offset, "rows": out}

    @r.get("/features/{layer}/{feature}")
    def feature(layer: int, feature: int, prompt: str | None = None) -> dict:
        """Stats, top contexts with per-token activations, token cloud, logit effects."""
        layer = layer_or_default(layer)
        detail = lab.feature_detail(layer, feature, prompt)
        stats = lab.stats(layer)
        show = lab.tokens.show
        body = {"layer": layer, "id": detail.feature, "stats": {}, "note": detail.note,
                "contexts": [{"tokens": list(c.tokens), "acts": list(c.acts), "spans": list(c.spans),
                              "max": max(c.acts, default=0.0)} for c in detail.contexts],
                "cloud": [{"token": t, "weight": w} for t, w in detail.cloud],
                "logit_effects": {"up": [], "down": []},
                "prompt": ({"tokens": list(detail.prompt.tokens), "acts": list(detail.prompt.acts),
                            "spans": list(detail.prompt.spans)} if detail.prompt is not None else None)}
        if stats is not None:
            f = detail.feature
            body["stats"] = {"density": _num(stats.density[f]), "mean": _num(stats.mean_act[f]),
                             "max": _num(stats.max_act[f]), "n_tokens": int(stats.n_tokens)}
            body["logit_effects"] = {
                "up": [{"token": show(t.id), "value": t.value} for t in stats.top_logits(f, 10)],
                "down": [{"token": show(t.id), "value": t.value} for t in stats.bottom_logits(f, 10)]}
        return body

    @r.post("/logits")
    def logits(req: LogitsRequest) -> dict:
        """Baseline vs patched next tokens of ``prompt`` under the patches on now."""
        return payloads.logits(lab, session.prompt if req.prompt is None else req.prompt)

    @r.get("/provenance")
    def provenance(layer: int, feature: int, prompt: str | None = None, depth: int = Query(2, ge=1, le=8),
                   method: Literal["grad", "ig"] = "grad", top: int = Query(5, ge=1, le=50),
                   patched: bool = False, format: str = "tuiwb") -> dict:
        """The upstream attribution graph of a feature (``prompt`` default: the shared prompt; empty:
        the static view)."""
        if format not in FORMATS:
            raise TuiwbError(f"unknown `format` {format!r}: use one of {', '.join(FORMATS)}")
        text = session.prompt if prompt is None else prompt
        graph = lab.provenance_graph(layer_or_default(layer), feature, text if text.strip() else None,
                                     depth=depth, patched=patched, method=method, top=top)
        if format == "circuit-tracer":
            from tuiwb.provenance.circuit_tracer import to_circuit_tracer

            return to_circuit_tracer(graph, model=str(lab.info().model_id))
        return graph.to_json()

    @r.get("/patches")
    def patches() -> list[dict]:
        return payloads.patch_rows(lab)

    @r.post("/patches")
    def add_patch(req: PatchRequest) -> dict:
        """Add a hook patch on features of one layer (off unless ``on``), or attach a ``lora/NAME``."""
        with session.changes_from(HTTP_ORIGIN):
            if req.lora is not None:
                p = session.attach_lora(inside_roots(req.lora, roots, "lora"), enabled=req.on, name=req.name)
            else:
                if not req.features:
                    raise TuiwbError("`features` is empty: name at least one feature id")
                if req.mode == "scale" and req.alpha is None:
                    raise TuiwbError("mode scale needs `alpha` (e.g. 0.5)")
                mode = "ablate" if req.mode == "ablate" else f"scale={req.alpha:g}"
                p = session.add_patch(name=req.name, layer=layer_or_default(req.layer), features=req.features,
                                      mode=mode, method="hook", enabled=req.on)
        return next(row for row in payloads.patch_rows(lab) if row["name"] == p.name)

    @r.delete("/patches/{name}")
    def remove_patch(name: str) -> dict:
        from tuiwb.patch.edit import check_name

        with session.changes_from(HTTP_ORIGIN):
            session.remove_patch(check_name(name))
        return {"removed": name}

    return r

