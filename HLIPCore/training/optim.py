"""AdamW with the reference's parameter groups and open_clip's cosine schedule with linear warm-up."""
import math
from typing import List, Tuple

import torch


def no_decay(name: str, param: torch.Tensor, extra: set = frozenset()) -> bool:
    """open_clip/HLIP exclude gains, biases and the logit scale from weight decay; we also exclude the class token
    and position embeddings (the trunk's `no_weight_decay`) and the SigLIP logit bias."""
    leaf = name.split(".")[-1]
    return (param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
            or leaf in extra)


def param_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    extra = set()
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is not None and hasattr(trunk, "no_weight_decay"):
        extra = set(trunk.no_weight_decay())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay_off = [p for n, p in named if no_decay(n, p, extra)]
    decay_on = [p for n, p in named if not no_decay(n, p, extra)]
    return [{"params": decay_off, "weight_decay": 0.0}, {"params": decay_on, "weight_decay": weight_decay}]


def create_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: Tuple[float, float] = (0.9, 0.98),
                     eps: float = 1e-6) -> torch.optim.AdamW:
    # foreach=False: the single-tensor path gives the same bits however the parameters are grouped in memory
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=False)


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int) -> float:
    """open_clip's `cosine_lr`: base_lr * (step + 1) / warmup during warm-up, then a half cosine to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    done, span = step - warmup, max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * done / span)) * base_lr


class CosineSchedule:
    """Sets the learning rate of every group before each step; its state is the step count alone."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total_steps: int):
        self.optimizer, self.base_lr, self.warmup, self.total_steps = optimizer, base_lr, warmup, total_steps
        self.last_step = -1

    def step(self, step: int) -> float:
        lr = cosine_lr(step, self.base_lr, self.warmup, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup": self.warmup, "total_steps": self.total_steps,
                "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state.get("last_step", -1))
