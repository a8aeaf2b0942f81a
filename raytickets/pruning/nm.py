"""N:M semi-structured sparsity (`prune.pattern: "2:4"`): within every group of M consecutive input weights of a
row (the last dimension of a Linear weight [out, in]) at most N survive — the layout Ampere-class sparse tensor
cores run (2:4; `torch.sparse.to_sparse_semi_structured`).

Not a method: the unstructured methods prune to a pattern with their own scores. Every round keeps the N
highest-scored survivors of each group out of reach and prunes the lowest-scored of the rest, so no round can
leave a group with fewer than N (which the last round could not undo: pruned weights never regrow); the last
round, at 1 - N/M by construction, prunes exactly the survivors beyond N in every group.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import ConfigError
from ..masks import Mask
from .unstructured import _flat_scores, check_choice, prune_each, smallest, SCOPES

YAML_HINT = "quote it (an unquoted 2:4 is read by YAML as the base-60 number 124)"


def parse_pattern(value: object, field: str = "prune.pattern") -> tuple[int, int] | None:
    """(N, M) of an "N:M" string; None for null. One-line ConfigError for anything else, N >= M included."""
    if value is None:
        return None
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"{field}: {value!r} is not a pattern; allowed: null or \"N:M\" with 1 <= N < M, "
                          f"e.g. \"2:4\"; {YAML_HINT}")
    n, m = (int(p) for p in parts)
    if not 1 <= n < m:
        raise ConfigError(f"{field}: {value!r} keeps {n} of every {m}; allowed: \"N:M\" with 1 <= N < M (e.g. \"2:4\")")
    return n, m


def pattern_sparsity(n: int, m: int) -> float:
    return 1.0 - n / m


def check_divides(shapes: Mapping[str, tuple[int, ...]], n: int, m: int, field: str = "prune.pattern") -> None:
    """Every prunable tensor's input size (last dimension) is a multiple of M; a 1-D tensor has no rows."""
    for name, shape in shapes.items():
        if len(shape) < 2 or shape[-1] % m:
            what = f"input size {shape[-1]}" if len(shape) >= 2 else f"a {len(shape)}-D tensor (no input rows)"
            raise ConfigError(f"{field}: \"{n}:{m}\" does not divide tensor {name!r} ({what}); allowed: a pattern "
                              f"whose M divides every prunable tensor's input size, or prune.exclude for the tensor")


def _protected(flat: torch.Tensor, keep: torch.Tensor, shape: tuple[int, ...], n: int, m: int) -> torch.Tensor:
    """The N highest-scored survivors of each group of M consecutive input weights (flat, bool); ties go to the
    lower index (a stable sort), pruned weights are never protected."""
    scores = torch.where(keep, flat, torch.tensor(float("-inf"))).reshape(-1, m)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n]
    top = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)
    return top.reshape(-1) & keep


def pattern_prune(mask: Mask, target_sparsity: float, scope: str, scores: Mapping[str, torch.Tensor], n: int, m: int,
                  largest: bool = False) -> Mask:
    """`prune_lowest` under an N:M floor: exactly round(target * total) pruned (globally or per tensor), never
    one of a group's N highest-scored survivors. At target 1 - N/M every group keeps exactly N."""
    check_choice("scope", scope, SCOPES)
    check_divides(mask.shapes, n, m)
    limit = pattern_sparsity(n, m)
    if target_sparsity > limit + 1e-12:
        raise ConfigError(f"target_sparsity: {target_sparsity:.6g} is beyond the {n}:{m} pattern's {limit:.6g}")
    below = [name for name, keep in mask.tensors.items() if int(keep.reshape(-1, m).sum(1).min()) < n]
    if below:  # pruned without the floor (a mask from elsewhere): its groups can never be brought back to N
        raise ConfigError(f"prune.pattern: \"{n}:{m}\" cannot be reached from a mask with groups of fewer than {n} "
                          f"survivors (tensor {below[0]!r})")

    def drop(keep: torch.Tensor, count: int, names: list[str]) -> torch.Tensor:
        flat = torch.cat([_flat_scores(name, scores[name], largest) for name in names])
        sizes = [mask.tensors[name].numel() for name in names]
        protected = torch.cat([_protected(f, k, mask.shapes[name], n, m) for name, f, k in
                               zip(names, flat.split(sizes), keep.split(sizes))])
        eligible = (~protected[keep]).nonzero().squeeze(1)
        chosen = torch.zeros(int(keep.sum()), dtype=torch.bool)
        chosen[eligible[smallest(flat[keep][eligible], count)]] = True
        return chosen

    return prune_each(mask, target_sparsity, scope, drop)


def violations(mask: Mask, n: int, m: int) -> dict[str, int]:
    """Per tensor, how many groups of M consecutive input weights keep more than N ({} when the mask is N:M)."""
    out = {}
    for name, keep in mask.tensors.items():
        over = int((keep.reshape(-1, m).sum(1) > n).sum()) if keep.ndim >= 2 and keep.shape[-1] % m == 0 else -1
        if over:
            out[name] = over
    return out
