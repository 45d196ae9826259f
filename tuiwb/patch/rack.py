"""Several LoRA patches live in one model at once, switched on and off without a reload.

Each LoRA patch is a PEFT adapter injected (``peft.inject_adapter_in_model``) into the model under
its own adapter name; PEFT wraps plain ``nn.Linear``, GPT-2 ``Conv1D`` and bitsandbytes
``Linear4bit``/``Linear8bitLt`` layers alike. Toggling sets the list of active adapters on every
wrapped layer (``set_adapter([...])``): no weights move, so a toggle costs microseconds. With no
adapter active a wrapped layer returns exactly its base layer's output, so "all patches off" is
bit-for-bit the unpatched model. Using PEFT's own layers here (rather than our own hooks) means the
adapter ``tuiwb patch export`` writes computes exactly what the Session showed.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import torch

from tuiwb.errors import TuiwbError
from tuiwb.model.quiet_imports import import_peft
from tuiwb.patch.lora_fit import LoraFactors


def fan_in_fan_out(model: torch.nn.Module, names) -> bool:
    """True when the targets are GPT-2-style ``Conv1D`` layers (weights stored ``[in, out]``)."""
    modules = dict(model.named_modules())
    for n in names:
        mod = modules.get(n)
        base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
        if type(base).__name__ == "Conv1D":
            return True
    return False


class LoraRack:
    """The LoRA adapters injected into one live model and which of them are active."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._factors: dict[str, LoraFactors] = {}
        self._active: tuple[str, ...] = ()
        self._layers: list = []

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._factors)

    @property
    def active(self) -> tuple[str, ...]:
        return self._active

    def factors(self, name: str) -> LoraFactors:
        return self._factors[name]

    def add(self, name: str, factors: LoraFactors) -> None:
        """Inject ``factors`` as adapter ``name`` (inactive until ``set_active`` names it)."""
        peft = import_peft()
        LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model

        if name in self._factors:
            raise TuiwbError(f"a LoRA adapter named {name!r} is already injected: remove it first or pick another name")
        r = factors.rank
        # lora_alpha = r makes PEFT's scaling 1, so the effective factors are the weights.
        config = LoraConfig(r=r, lora_alpha=r, target_modules=sorted(factors.modules), lora_dropout=0.0,
                            bias="none", init_lora_weights=True,
                            fan_in_fan_out=fan_in_fan_out(self.model, factors.modules))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Already found a peft_config attribute": intended here
            inject_adapter_in_model(config, self.model, adapter_name=name)
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for mod_name, (A, B) in factors.modules.items():
                layer = modules[mod_name]
                scaling = layer.scaling[name]
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                a.copy_((A / scaling).to(a.device, a.dtype))  # [r, d_in]
                b.copy_(B.to(b.device, b.dtype))  # [d_out, r]
        self._factors[name] = factors
        self._refresh_layers()
        self._apply()

    def remove(self, name: str) -> None:
        """Delete adapter ``name`` from every layer (the wrappers stay, returning base outputs)."""
        if name not in self._factors:
            return
        for layer in self._layers:
            if name in layer.lora_A:
                layer.delete_adapter(name)
        cfg = getattr(self.model, "peft_config", None)
        if isinstance(cfg, dict):
            cfg.pop(name, None)
        del self._factors[name]
        self._active = tuple(n for n in self._active if n != name)
        self._apply()

    def set_active(self, names: Iterable[str]) -> None:
        """Make exactly ``names`` active (any order; unknown names are an error)."""
        names = tuple(names)
        unknown = [n for n in names if n not in self._factors]
        if unknown:
            raise TuiwbError(f"no LoRA adapter named {unknown[0]!r} (adapters: {', '.join(self._factors) or 'none'})")
        if names != self._active:
            self._active = names
            self._apply()

    def _refresh_layers(self) -> None:
        import_peft()
        from peft.tuners.lora import LoraLayer

        self._layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]

    def _apply(self) -> None:
        active = list(self._active)
        for layer in self._layers:
            layer.set_adapter(active, inference_mode=True)
