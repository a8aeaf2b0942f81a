"""Mixed precision: which dtype a forward pass computes in, on which hardware, and the fp16 loss scaler.

Weights stay fp32 (autocast casts per operation), so the mask is applied and the optimiser steps in fp32;
`train.precision` chooses the compute dtype of training, evaluation and importance scoring alike.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_native(device: torch.device) -> bool:
    """Whether the hardware computes bf16 matrix products natively: CUDA compute capability >= 8, or a CPU with
    AMX (oneDNN's AMX kernels; `torch.backends.cpu.get_cpu_capability()` says "AMX" where torch uses them)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return "AMX" in torch.backends.cpu.get_cpu_capability()


def resolve(precision: str | None, device: torch.device) -> str:
    """`precision` as given, or for null ("auto") bf16 where the hardware has it natively, else fp32."""
    if precision is not None:
        return precision
    return "bf16" if bf16_native(device) else "fp32"


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in: torch.autocast to bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its 5-bit exponent underflows small gradients); bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler, grad_scaler: torch.amp.GradScaler | None) -> None:
    """One optimiser and learning-rate step, gradients cleared; under fp16's GradScaler the step is skipped when
    the gradients overflowed (and the scale lowered)."""
    if grad_scaler:
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
