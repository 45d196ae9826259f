"""The SAE stage: the model (SAELens names), its on-disk formats, the training objective and data,
the Lightning trainer, and evaluation (FVU, L0, dead latents, spliced CE). Lazy, torch-free until used."""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "SAE": "model", "SAEConfig": "model", "load_sae": "io", "load_saes": "io", "save_sae": "io",
    "TrainConfig": "config", "train_saes": "train", "evaluate": "eval", "EvalResult": "eval",
    "check_sae_fits": "compat",
})
