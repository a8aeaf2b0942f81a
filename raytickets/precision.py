"""Mixed precision: which dtype a forward pass computes in, on which hardware, and the fp16 loss scaler.

Weights stay fp32 (autocast casts per operation), so the mask is applied and the optimiser steps in fp32;
`train.precision` chooses the compute dtype of training, evaluation and importance scoring alike.
"""

from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_native(device: torch.device) -> bool:
    """Whether the hardware computes bf16 matrix products natively: CUDA compute capability >= 8 (Ampere on), or
    an x86 CPU with AVX512-BF16 or AMX-BF16 (`cpu_bf16_isa`), where oneDNN runs bf16 matmuls on them.

    Measured (benchmarks/precision.py, MiniLM, batch 32, length 128, 2 threads, a CPU listing avx512_bf16 and
    amx_bf16, where oneDNN reports its AMX kernels): bf16 took 0.58-0.63x fp32's time a training step and 0.35x an
    evaluation batch, at the same SST-2 accuracy (docs/precision.md). Other CPUs (no such flags, ARM, Apple
    silicon) keep fp32: bf16 there is emulated or unmeasured here.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and cpu_bf16_isa() is not None


@functools.cache
def cpu_bf16_isa() -> str | None:
    """The CPU's native bf16 instructions, "amx_bf16" or "avx512_bf16", else None.

    Linux: the flags /proc/cpuinfo lists (what lscpu shows; the kernel lists AMX only where it lets programs use
    it). Elsewhere: torch's own cpuinfo probes (`torch.cpu._is_amx_tile_supported`, `_is_avx512_bf16_supported`).
    Not `torch.backends.cpu.get_cpu_capability()`: it names the level of torch's own vector kernels (DEFAULT,
    AVX2, AVX512, ...), never AMX, so it cannot tell a bf16 CPU from an older AVX512 one.
    """
    flags = _linux_cpu_flags()
    if flags is not None:
        return next((isa for isa in ("amx_bf16", "avx512_bf16") if isa in flags), None)
    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    return next((isa for isa, probe in probes if getattr(torch.cpu, probe, lambda: False)()), None)


def _linux_cpu_flags() -> set[str] | None:
    """The x86 `flags` of /proc/cpuinfo's first processor; None where there is no such file or line (not Linux,
    or an ARM CPU, whose line is `Features`)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def resolve(precision: str | None, device: torch.device) -> str:
    """`precision` as given, or for null ("auto") bf16 where the hardware has it natively (`bf16_native`), else
    fp32."""
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
