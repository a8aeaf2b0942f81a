"""MT-DNN's Adamax, the optimiser Liang et al. (2021) train with: weight decay added after normalisation.

`torch.optim.Adamax(weight_decay=wd)` adds wd·w to the *gradient*; Adamax then divides by the running
max |g|, so for a weight whose gradient is ~0 (an embedding row of a token never seen) the step is
lr·sign(w) whatever wd is: every such weight shrinks by about lr per step. MT-DNN adds wd·w to the
*normalised update* instead (a decoupled decay, lr·wd·w per step), with no bias correction and eps both
inside the infinity norm and in the denominator. This module is that rule, step for step:

    m ← β1·m + (1 − β1)·g                     cliang1453/super-structured-lottery-tickets module/bert_optim.py:120
    u ← max(β2·u, |g| + eps)                  ibid. :122-126
    Δ ← m / (u + eps)                          ibid. :127   (no bias correction)
    Δ ← Δ + wd·w        (wd > 0)              ibid. :129-130
    w ← w − lr·Δ                               ibid. :138-139

(the same lines in namisan/mt-dnn module/bert_optim.py:149-176 at 676b48b1, the last commit that has the
file). Its defaults are MT-DNN's: betas (0.9, 0.999), eps 1e-6 (ibid. :37). Two parts of MT-DNN's class
are left to the training loop, where raytickets already has them: the learning-rate schedule (theirs is
`warmup_linear` over t_total, the linear warmup and decay `train.make_optimizer` builds) and the
per-tensor clipping `max_grad_norm`, which Liang's scripts switch off (`grad_clipping=0`,
scripts/train_mtdnn.sh:20) in favour of the global clipping (`global_grad_clipping=1`), raytickets'
`train.max_grad_norm`.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

__all__ = ["MTDNNAdamax"]


class MTDNNAdamax(Optimizer):
    """Adamax with MT-DNN's decoupled weight decay and no bias correction (module/bert_optim.py:21-142)."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        if not lr >= 0.0:
            raise ValueError(f"lr: {lr} must be >= 0")
        if not eps >= 0.0:
            raise ValueError(f"eps: {eps} must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas: {betas} must each be in [0, 1)")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay: {weight_decay} must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, lr, decay = group["eps"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("MTDNNAdamax does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
                update = exp_avg / (exp_inf + eps)
                if decay > 0.0:  # after the normalisation: a decay of lr·wd·w, not lr·sign(w)
                    update.add_(p, alpha=decay)
                p.add_(update, alpha=-lr)
                state["step"] += 1
        return loss
