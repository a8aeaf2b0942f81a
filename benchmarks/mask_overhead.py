"""What keeping a 50% mask costs per training step of MiniLM: our re-apply after the optimizer step
versus torch.nn.utils.prune's forward pre-hooks (the original BERT-Tickets code's approach).

Three variants, stepped in turn (rotating which goes first) so machine noise hits all alike:
  dense  - forward + backward + AdamW step;
  ours   - the same, then `mask.apply(params, check=False)` (a multiplication) after every optimizer step,
           as `train.finetune` does;
  hooks  - prune.custom_from_mask on every prunable module: weight = weight_orig * mask on every forward.

    python benchmarks/mask_overhead.py [--steps 8 --warmup 2 --batch 32 --length 128 --threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from raytickets.masks import Mask  # noqa: E402
from raytickets.models import MINILM, encoder, load_model, prunable_parameters  # noqa: E402
from raytickets.pruning import random_prune  # noqa: E402


def make_batch(vocab_size: int, batch: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(1000, vocab_size, (batch, length), generator=generator),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=generator),
    }


class Variant:
    """One model + AdamW, and how a step keeps (or ignores) the mask."""

    def __init__(self, name: str, mask: Mask | None, seed: int):
        self.name = name
        self.model = load_model(MINILM, 2, seed=seed)
        self.model.train()
        self.params = prunable_parameters(self.model)
        self.mask = mask if name == "ours" else None
        if name == "ours":
            mask.apply(self.params)
        if name == "hooks":
            for param_name in self.params:
                module = encoder(self.model).get_submodule(param_name.rsplit(".", 1)[0])
                prune.custom_from_mask(module, "weight", mask.tensors[param_name])
        # Built after pruning: with hooks the trainable tensor is `weight_orig`.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-5)
        self.times: list[float] = []

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.model(**batch).loss.backward()
        self.optimizer.step()
        if self.mask is not None:
            self.mask.apply(self.params, check=False)  # validated once, in __init__
        self.times.append(time.perf_counter() - start)


def check_pruned(variants: dict[str, Variant], mask: Mask) -> None:
    """The masked variants really train a 50% sparse network (what the timings are worth)."""
    ours = prunable_parameters(variants["ours"].model)
    assert all(not p[~mask.tensors[n]].any() for n, p in ours.items()), "ours: pruned weights are not zero"
    enc = encoder(variants["hooks"].model)
    for n in mask.names:
        assert not getattr(enc.get_submodule(n.rsplit(".", 1)[0]), "weight")[~mask.tensors[n]].any(), n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    dense_params = prunable_parameters(load_model(MINILM, 2, seed=args.seed))
    mask = random_prune(Mask.ones_like(dense_params), args.sparsity, generator=generator)
    variants = {name: Variant(name, mask, args.seed) for name in ("dense", "ours", "hooks")}
    vocab_size = variants["dense"].model.config.vocab_size
    order = list(variants)
    print(f"MiniLM ({mask.num_total:,} prunable weights, mask sparsity {mask.sparsity():.3f}); batch {args.batch} x "
          f"length {args.length}; {args.threads} threads; {args.warmup} warmup + {args.steps} timed steps each, interleaved")
    for repeat in range(args.warmup + args.steps):
        batch = make_batch(vocab_size, args.batch, args.length, generator)
        for name in order[repeat % 3:] + order[: repeat % 3]:  # rotate who goes first
            variants[name].step(batch)
    check_pruned(variants, mask)

    medians = {name: statistics.median(v.times[args.warmup:]) for name, v in variants.items()}
    for name, v in variants.items():
        timed = v.times[args.warmup:]
        print(f"{name:>6}: median {medians[name]:.3f} s/step (min {min(timed):.3f}, max {max(timed):.3f})")
    print(f"ours/dense  = {medians['ours'] / medians['dense']:.3f}")
    print(f"hooks/dense = {medians['hooks'] / medians['dense']:.3f}")


if __name__ == "__main__":
    main()
