"""Inference precision: fp32, or bf16 autocast (CPU with AMX/AVX512-bf16, and GPU)."""
import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device, precision: str = "fp32"):
    """Context in which the model runs at `precision`; fp32 is a no-op."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
