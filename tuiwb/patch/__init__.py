"""The patch stage: the exact SAE-gated edit (hook), the fitted rank-r LoRA that imitates it, the rack
that hot-swaps adapters, and patches on disk (manifest + PEFT adapter). Lazy, torch-free until used."""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "Patch": "edit", "gated_edit": "edit", "make_edit": "edit", "FitConfig": "config", "fit_lora": "lora_fit",
    "LoraRack": "rack", "read_patch": "io", "save_patch": "io", "export_merged": "io",
})
