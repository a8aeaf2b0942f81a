"""DDP helpers: which rank this is, agreeing on decisions, syncing masks, and global batches split over ranks.

Every helper is a no-op in one process (tests, `raytickets imp`). Inside Ray Train's TorchTrainer (gloo on
CPU, nccl on GPU) ranks agree on anything decided from the file system, hold rank 0's mask, and train on
their part of *global* batches: the same examples per step as one process with a batch `world` times
larger, so N workers and one worker follow the same trajectory.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def agree(value):
    """Rank 0's value on every rank (decisions that depend on the file system must not diverge)."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """`value` from every rank, in rank order."""
    if world()[1] == 1:
        return [value]
    out = [None] * world()[1]
    dist.all_gather_object(out, value)
    return out


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor (a copy; on gloo via CPU float64 for exact, order-stable sums)."""
    if world()[1] == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def sync_mask(mask):
    """Every rank holds rank 0's mask (scores computed on different shards could tie-break differently)."""
    from .masks import Mask

    if world()[1] == 1:
        return mask
    tensors = {}
    for name, t in mask.tensors.items():
        buf = t.to(torch.uint8).clone()
        dist.broadcast(buf, src=0)
        tensors[name] = buf.bool()
    return Mask(tensors)


def global_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order of epoch `epoch`: the permutation a seeded RandomSampler draws, or the file order."""
    if not shuffle:
        return list(range(num_examples))
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    # A DataLoader draws its workers' base seed from the generator before the sampler's permutation; the
    # same draw here keeps the data order of every run made with a DataLoader (the same rows, bit for bit).
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(num_examples, generator=generator).tolist()


def global_batches(num_examples: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                   lengths: list[int] | None = None) -> Iterator[tuple[list[int], int]]:
    """(this rank's indices, size of the global batch) for each global batch of `batch_size · world` examples.

    Rank r takes every world-th example of a global batch. A last global batch with fewer examples than
    ranks is dropped on every rank (DDP needs every rank in every step). With `lengths`, examples of
    similar length share a batch (`bucketed`): fewer pad tokens, the same examples per epoch.
    """
    rank, size = world()
    order = global_order(num_examples, seed, epoch, shuffle)
    step = batch_size * size
    chunks = [order[i:i + step] for i in range(0, len(order), step)]
    if lengths is not None:
        chunks = bucketed(order, lengths, step, seed * 100_003 + epoch)
    for chunk in chunks:
        if len(chunk) < size:
            continue
        yield chunk[rank::size], len(chunk)


BUCKET_WINDOW = 50  # global batches sorted by length together: a window this many batches long


def bucketed(order: list[int], lengths: list[int], step: int, seed: int) -> list[list[int]]:
    """Global batches of similar-length examples: the epoch's order cut into windows of BUCKET_WINDOW batches,
    each window sorted by length and cut into batches, then the batches shuffled (seeded) so lengths do not
    follow the steps. (HF's group_by_length works the same way; ours keeps DDP's global-batch split.)"""
    window = step * BUCKET_WINDOW
    chunks = []
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda i: -lengths[i])
        chunks += [part[i:i + step] for i in range(0, len(part), step)]
    shuffle = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    return [chunks[i] for i in shuffle]


def loss_weight(local: int, global_size: int) -> float:
    """Factor turning this rank's mean loss into its share of the global batch's mean loss, given that DDP
    averages gradients over ranks: n_r · world / N (1 in one process)."""
    return local * world()[1] / global_size


def rank_batches(dataset, collate: Callable, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                 limit: int | None = None) -> Iterator[dict]:
    """This rank's part of the first `limit` (all: None) global batches of an epoch, collated."""
    for i, (indices, _) in enumerate(global_batches(len(dataset), batch_size, seed, epoch, shuffle)):
        if limit is not None and i >= limit:
            break
        yield collate([dataset[j] for j in indices])
