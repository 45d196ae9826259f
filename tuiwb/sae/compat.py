"""Does this SAE fit this model / these activations? The one check every join goes through."""

from __future__ import annotations

from tuiwb.errors import TuiwbError
from tuiwb.model.arch import fingerprints_match


def sae_layer(sae) -> int:
    """The residual layer an SAE reads (``cfg.layer``); a clear error when it does not say."""
    layer = getattr(getattr(sae, "cfg", None), "layer", None)
    if layer is None:
        raise TuiwbError("this SAE does not say which layer it reads (no hook_name/layer in its cfg.json)")
    return int(layer)


def check_same_model(loaded, store, what: str) -> None:
    """``store`` (activations) comes from ``loaded``'s very weights, not just the same config."""
    if store is None:
        return
    if store.config_hash and store.config_hash != loaded.config_hash:
        raise TuiwbError(f"`model` is not the model {what} (config hash {loaded.config_hash} ≠ "
                         f"{store.config_hash}): pass the same model")
    if not fingerprints_match(getattr(store, "fingerprint", None), loaded.fingerprint):
        raise TuiwbError(f"`model` is not the model {what}: same config, other weights (e.g. another "
                         "fine-tune of the base): pass the same model, or trace this one")


def check_sae_fits(sae, *, loaded=None, store=None, layer: int | None = None, splice: bool = False) -> int:
    """The SAE's layer, after checking it against what it is joined with; one-line errors otherwise.

    ``layer``: the layer the caller attaches it at; ``loaded``: the model (width and config hash);
    ``store``: the activations (recorded layer, hook point, width); ``splice``: the SAE replaces or
    edits a layer's output, so it must read ``blocks.L.hook_resid_post``.
    """
    own = sae_layer(sae)
    if layer is not None and own != layer:
        raise TuiwbError(f"the SAE given for layer {layer} reads layer {own}")
    cfg = sae.cfg
    hook = cfg.hook_name
    if store is not None:
        if own not in store.layers:
            have = ", ".join(map(str, store.layers))
            raise TuiwbError(f"layer {own} (the SAE's) is not in the activations (recorded layers: {have})")
        if hook and hook != store.column(own):
            raise TuiwbError(f"the SAE reads {hook} but the activations hold {store.column(own)}: "
                             "use activations traced at its own hook point")
        if cfg.d_in != store.d_model:
            raise TuiwbError(f"the SAE's d_in is {cfg.d_in} but the activations are {store.d_model} wide: "
                             "this SAE was made for another model")
    if loaded is not None:
        check_same_model(loaded, store, "the activations were traced from")
        loaded.check_layer(own)
        if cfg.d_in != loaded.d_model:
            raise TuiwbError(f"the SAE for layer {own} has d_in {cfg.d_in} but the model's d_model is "
                             f"{loaded.d_model}: it was trained on another model")
        want = cfg.model_config_hash
        if want and want != loaded.config_hash:
            raise TuiwbError(f"the SAE for layer {own} was trained on another model (config hash {want} ≠ "
                             f"{loaded.config_hash}): load that model or train an SAE for this one")
        if not fingerprints_match(cfg.model_fingerprint, loaded.fingerprint):
            raise TuiwbError(f"the SAE for layer {own} was trained on another model with the same config (its "
                             "weights differ, e.g. another fine-tune): load that model or train an SAE for this one")
    if splice and hook and not hook.endswith("hook_resid_post"):
        raise TuiwbError(f"the SAE for layer {own} reads {hook}; splicing and patching need a "
                         "blocks.L.hook_resid_post SAE")
    return own
