"""The JSON bodies the API and the WebSocket send, built from the view adapter (``Lab``).

One place for each shape (docs/companion.md), so HTTP and WebSocket answers never drift apart.
Everything here runs in a worker thread: it calls the Session.
"""

from __future__ import annotations

from tuiwb.session.adapter import Lab
from tuiwb.session.views import LogitsView, PatchView


def patch_row(p: PatchView) -> dict:
    """One patch: ``{"name", "kind", "layer", "features", "mode", "on", "rank", "fidelity"}``."""
    return {"name": p.name, "kind": p.method, "layer": p.layer, "features": list(p.features), "mode": p.mode,
            "on": p.enabled, "rank": p.rank, "fidelity": p.fidelity}


def patch_rows(lab: Lab) -> list[dict]:
    return [patch_row(p) for p in lab.patches()]


def state(lab: Lab, target: dict | None = None) -> dict:
    """``GET /api/state`` and the WebSocket's ``hello``."""
    info = lab.info()
    with lab.atomic():  # patches and prompt of one moment
        patches, prompt = patch_rows(lab), lab.session.prompt
    return {"model": info.model_id, "n_layers": info.n_layers, "layers": list(info.layers), "patches": patches,
            "prompt": prompt, "target": target, "device": info.device, "quant": info.quant,
            "has_acts": info.has_acts}


def _rows(rows) -> list[dict]:
    return [{"token": r.token, "id": r.id, "p": r.patched, "p_base": r.base, "dp": r.delta} for r in rows]


def top_rows(view: LogitsView) -> list[dict]:
    """The patched top tokens with their baseline probability and the change."""
    return _rows(view.patched_top)


def base_rows(view: LogitsView) -> list[dict]:
    """The baseline's top tokens (same row shape): the page keeps a token a patch pushed out of ``top``."""
    return _rows(view.base_top)


def logits(lab: Lab, prompt: str) -> dict:
    """``POST /api/logits`` and the body of a WebSocket ``logits`` message: one lock hold, so the
    numbers and the patch states belong together."""
    with lab.atomic():
        patches = patch_rows(lab)
        if not prompt.strip():  # nothing to predict from yet: empty bars, not an error
            return {"prompt": prompt, "top": [], "base_top": [], "kl": 0.0, "patches": patches, "model_ms": 0.0}
        view = lab.logits(prompt)
    return {"prompt": prompt, "top": top_rows(view), "base_top": base_rows(view), "kl": view.kl, "patches": patches,
            "model_ms": view.model_ms}
