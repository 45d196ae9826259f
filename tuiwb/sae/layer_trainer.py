"""One SAE's training step without a framework: the LR search's probes and live training use it.

The same objective, Adam, schedule (warm-up, flat, linear decay), decoder constraints (gradient
projected off the rows, rows renormalised), gradient clipping and "tokens since fired" counter as
``SAETrainModule``; under ``torch.distributed`` the gradients and the fired mask are all-reduced
(plain data parallelism: every rank steps identical weights).
"""

from __future__ import annotations

import torch

from tuiwb.sae.model import SAE
from tuiwb.sae.objective import lr_lambda, step_loss


def _world() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


class LayerTrainer:
    """Steps ``sae`` (in the normalised space: inputs are multiplied by ``scale``) for ``steps`` steps."""

    def __init__(self, sae: SAE, cfg, *, steps: int, lr: float, scale: float):
        self.sae, self.cfg, self.steps, self.lr, self.scale = sae, cfg, steps, float(lr), float(scale)
        self.opt = torch.optim.Adam(sae.parameters(), lr=self.lr, betas=(0.9, 0.999))
        self.warmup = max(1, round(cfg.warmup_fraction * steps))
        self.decay_start = max(self.warmup, steps - round(cfg.decay_fraction * steps))
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=sae.W_enc.device)  # tokens
        self.step_count = 0
        self.last = None

    def step(self, batch: torch.Tensor) -> None:
        cfg, sae = self.cfg, self.sae
        for group in self.opt.param_groups:
            group["lr"] = self.lr * lr_lambda(self.step_count, self.steps, self.warmup, self.decay_start)
        x = batch.to(sae.W_enc.device, torch.float32) * self.scale  # [B, d]
        l1 = cfg.l1 * min(1.0, (self.step_count + 1) / max(1.0, cfg.l1_warmup_fraction * self.steps))
        out = step_loss(sae, x, dead=self.since_fired >= cfg.dead_tokens, l1=l1, aux_k=cfg.aux_k,
                        aux_coef=cfg.aux_coef)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        world, fired, n_tokens = _world(), out.fired, x.shape[0]
        if world > 1:
            for p in sae.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)
            fired = fired.to(torch.int32)
            torch.distributed.all_reduce(fired)
            fired, n_tokens = fired > 0, n_tokens * world
        sae.remove_parallel_decoder_grad()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        self.opt.step()
        sae.normalize_decoder()
        self.since_fired.add_(n_tokens).masked_fill_(fired, 0)
        self.step_count += 1
        self.last = out

    @property
    def done(self) -> bool:
        return self.step_count >= self.steps
