"""Sparse autoencoders on the residual stream: ReLU (β-sparsity), TopK and (imported) JumpReLU.

An ``SAE`` maps a residual-stream vector ``x [d_in]`` to latent activations ``a [d_sae]`` and back:

    pre   = (x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc          # [..., d_sae]
    a     = relu(pre)                    (relu)
          = relu(topk_k(pre))            (topk: all but the k largest set to 0)
          = relu(pre) · [pre > threshold] (jumprelu)
    x̂     = a @ W_dec + b_dec                                          # [..., d_in]

Parameters use the SAELens names and shapes, and always live in the model's *native* activation
scale: the trainer normalises activations by a fixed factor while training and folds it back on save
(:meth:`SAE.fold_input_scale`), so ``encode``/``decode`` apply directly to the hooked residual stream.
Decoder rows of the SAEs tuiwb trains are unit-norm, so ``a_f`` is the length of feature f's
contribution ``a_f · W_dec[f]`` in residual units. Saving/loading (SAELens and EleutherAI sparsify
layouts) lives in :mod:`tuiwb.sae.io`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from tuiwb.errors import ParamError, TuiwbError
from tuiwb.model.hooks import hook_layer

ARCHITECTURES = ("relu", "topk", "jumprelu")


@dataclass
class SAEConfig:
    """Shape, activation function and provenance of one SAE."""

    d_in: int
    """Input width: the model's ``d_model`` at ``hook_name``."""
    d_sae: int
    """Number of latents (dictionary size)."""
    architecture: str = "topk"
    """``"relu"`` (SAELens "standard"), ``"topk"`` or ``"jumprelu"`` (imported only)."""
    k: int | None = None
    """Active latents per token for ``topk``; None otherwise."""
    hook_name: str | None = None
    """Hook point, e.g. ``blocks.2.hook_resid_post``."""
    layer: int | None = None
    """Decoder layer whose output the SAE reads; parsed from ``hook_name`` when not given."""
    model_name: str | None = None
    """Base model id or path the SAE was trained on."""
    model_config_hash: str | None = None
    """``LoadedModel.config_hash`` of the base model, to refuse a mismatched model later."""
    model_fingerprint: list | None = None
    """``LoadedModel.fingerprint`` of the base model's weights (same config, other weights is refused)."""
    apply_b_dec_to_input: bool = True
    """Subtract ``b_dec`` from the input before encoding (SAELens' flag of the same name)."""
    norm_scaling_factor: float = 1.0
    """Factor the activations were multiplied by during training; already folded into the weights."""
    trace_manifest_hash: str | None = None
    """Hash of the activation store's manifest the SAE was trained on."""
    weights_hash: str | None = None
    """sha256 of the weights file as saved (set by ``save_sae``): patches record it, so attaching one to
    a retrained SAE, whose feature ids mean other features, is flagged."""
    training: dict | None = None
    """The ``TrainConfig`` used (plain dict), if trained by tuiwb."""
    metrics: dict | None = None
    """Final held-out metrics recorded by the trainer."""
    source: str = "tuiwb"
    """Where the weights came from: ``"tuiwb"``, ``"saelens"`` or ``"sparsify"``."""
    extra: dict = field(default_factory=dict)
    """Anything else worth keeping from an imported config (e.g. SAELens metadata)."""

    def __post_init__(self):
        if self.d_in <= 0 or self.d_sae <= 0:
            raise TuiwbError(f"d_in and d_sae must be positive, got d_in={self.d_in} d_sae={self.d_sae}")
        if self.architecture not in ARCHITECTURES:
            raise ParamError("architecture", f"must be one of {', '.join(ARCHITECTURES)}, not {self.architecture!r}")
        if self.architecture == "topk":
            if self.k is None or not 1 <= int(self.k) <= self.d_sae:
                raise ParamError("k", f"must be in 1..d_sae={self.d_sae} for a topk SAE, got {self.k}")
            self.k = int(self.k)
        if not (math.isfinite(self.norm_scaling_factor) and self.norm_scaling_factor > 0):
            raise ParamError("norm_scaling_factor", f"must be a positive number, got {self.norm_scaling_factor}")
        if self.layer is None and self.hook_name:
            self.layer = hook_layer(self.hook_name)

    def to_dict(self) -> dict:
        return asdict(self)


class SAE(nn.Module):
    """A sparse autoencoder with SAELens-named parameters (see the module docstring for the math)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.source_dir: Path | None = None
        """The directory this SAE was loaded from (None when built in memory)."""
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # [d_sae]
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))  # [d_sae, d_in]
        self.b_dec = nn.Parameter(torch.zeros(d_in))  # [d_in]
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae))  # [d_sae]
        self.reset_parameters()

    # ---- identity -------------------------------------------------------------------------------
    @property
    def layer(self) -> int | None:
        return self.cfg.layer

    @property
    def hook_name(self) -> str | None:
        return self.cfg.hook_name

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.architecture == "topk" else ""
        return f"{self.cfg.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k}, hook={self.hook_name}"

    # ---- init -----------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose ("tied init"), zero biases.

        The tied init starts every latent as a matched filter for its own direction, which is what
        keeps most TopK latents alive early on (Gao et al. 2024, §A.1).
        """
        w = torch.randn(self.d_sae, self.d_in, generator=generator)  # [d_sae, d_in]
        self.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        self.W_enc.copy_(self.W_dec.t())
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.cfg.architecture == "jumprelu":
            self.threshold.zero_()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (in place)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component along each decoder row, so a step only rotates the row.

        Keeps Adam from wasting its update on a norm change that renormalisation would undo.
        """
        g = self.W_dec.grad
        if g is None:
            return
        par = (g * self.W_dec).sum(-1, keepdim=True)  # [d_sae, 1]
        g.sub_(par * self.W_dec)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Turn an SAE trained on ``scale·x`` into the SAE for ``x`` (in place), decoder rows unchanged.

        For the positively homogeneous activations used here, dividing ``b_enc``, ``b_dec`` and the
        threshold by ``scale`` divides every latent by ``scale`` (the TopK selection is unchanged), so
        ``x̂(x) = x̂_scaled(scale·x) / scale`` exactly while ``W_dec`` stays unit-norm.
        """
        if scale == 1.0:
            return
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)
        if self.cfg.architecture == "jumprelu":
            self.threshold.div_(scale)
        self.cfg.norm_scaling_factor = float(self.cfg.norm_scaling_factor * scale)

    # ---- the maps -------------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``[..., d_sae]`` (before the nonlinearity)."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec  # [..., d_in]
        return x @ self.W_enc + self.b_enc  # [..., d_sae]

    def encode_topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK only: the k active values and their latent indices, each ``[..., k]``."""
        if self.cfg.architecture != "topk":
            raise ValueError("encode_topk is only defined for topk SAEs")
        vals, idx = self.pre_acts(x).topk(self.cfg.k, dim=-1)  # [..., k], [..., k]
        return torch.relu(vals), idx

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` (after the nonlinearity) for ``x [..., d_in]``."""
        pre = self.pre_acts(x)  # [..., d_sae]
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)  # [..., k]
            return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))
        return torch.relu(pre) * (pre > self.threshold)  # jumprelu

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from latent activations ``[..., d_sae]``."""
        return acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Reconstruction from ``(vals, idx)`` pairs ``[n, k]`` without the dense ``[n, d_sae]`` code."""
        out = nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=vals.to(self.W_dec.dtype),
                                          mode="sum")  # [n, d_in]
        return out + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For metrics on ``x [n, d_in]``: ``(x̂ [n, d_in], active latents per token [n],
        activation count per latent [d_sae])``; TopK never builds the dense ``[n, d_sae]`` code."""
        if self.cfg.architecture == "topk":
            vals, idx = self.encode_topk(x)  # [n, k]
            on = vals > 0
            return (self.decode_sparse(vals, idx), on.sum(-1),
                    torch.bincount(idx[on], minlength=self.d_sae))
        acts = self.encode(x)  # [n, d_sae]
        on = acts > 0
        return self.decode(acts), on.sum(-1), on.sum(0)

    def copy(self) -> SAE:
        """An independent copy (config and weights)."""
        new = SAE(replace(self.cfg, extra=dict(self.cfg.extra)))
        new.load_state_dict(self.state_dict())
        return new.to(self.W_enc.device)
