"""Inference precision: fp32, or bf16 (CPUs with AVX512-bf16/AMX, and GPUs).

bf16 keeps the numerics of `torch.autocast` (matrix products in bf16, norms and softmax statistics in fp32)
but stores the weights of linear and convolution layers in bf16 once, instead of letting autocast keep an
fp32 master copy plus a bf16 cache: the same results with about half the weight memory.
"""
import contextlib

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device, precision: str = "fp32"):
    """Context in which the model runs at `precision`; fp32 is a no-op."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def prepare_for_inference(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """Eval mode, no gradients; for bf16 the matmul weights are cast once (run it under `autocast`)."""
    model.eval().requires_grad_(False)
    if check_precision(precision) == "bf16":
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                module.to(torch.bfloat16)
    return model
