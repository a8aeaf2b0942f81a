"""What masking costs an MLM training step of MiniLM: masking every batch on the fly (transformers'
DataCollatorForLanguageModeling, what run_mlm.py and BERT-Tickets' derived code do) versus reading pre-masked
copies (raytickets.mlm.premask, masked once before training).

Three variants, stepped in turn on the same rows (rotating which goes first) so machine noise hits all alike:
  on-the-fly       - DataCollatorForLanguageModeling(rows of unmasked blocks) -> model(**batch).loss -> AdamW step;
  pre-masked       - collate_blocks(rows of a pre-masked copy) -> model(**batch).loss -> AdamW step;
  pre-masked+sparse - the same rows -> SparsePredictionMLM(model)(**batch).loss: the vocabulary head on the
                      masked positions only (the same loss; a [B, T, 30522] logit tensor never exists).
Then the masking alone: the collator's per-batch cost against stacking pre-masked rows, and the one-time cost of
pre-masking the blocks `--copies` times.

    python benchmarks/mlm_masking.py [--steps 5 --warmup 1 --batch 32 --length 128 --threads 2 --device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import default_glue_dir  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import DataCollatorForLanguageModeling  # noqa: E402

from raytickets.mlm import collate_blocks, corpus_texts, pack_array, premask  # noqa: E402
from raytickets.mlm_head import SparsePredictionMLM, load_mlm_model  # noqa: E402
from raytickets.models import MINILM, load_tokenizer  # noqa: E402

VARIANTS = ("on-the-fly", "pre-masked", "pre-masked+sparse")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class Bench:
    """One MiniLM + AdamW shared by the variants (a step's cost does not depend on the weights' values)."""

    def __init__(self, tokenizer, plain, masked, device: torch.device):
        self.plain, self.masked, self.device = plain, masked, device
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, return_tensors="pt")
        self.model = load_mlm_model(MINILM, seed=0).to(device)
        self.model.train()
        self.sparse = SparsePredictionMLM(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def step(self, variant: str, rows: range) -> None:
        """Fetch the rows, mask or stack them, forward, backward, optimizer step: what a training step does."""
        if variant == "on-the-fly":
            batch = self.collator([self.plain[i] for i in rows])
        else:
            batch = collate_blocks([self.masked[i] for i in rows])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        net = self.sparse if variant == "pre-masked+sparse" else self.model
        net(**batch).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--copies", type=int, default=10, help="pre-masked copies for the one-time cost")
    p.add_argument("--collate-repeats", type=int, default=50, help="batches timed for the masking cost alone")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--glue-dir", default=default_glue_dir())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    tokenizer = load_tokenizer(MINILM)
    docs, source = corpus_texts(None, args.glue_dir)
    blocks = pack_array(docs, tokenizer, args.length)
    rounds = args.warmup + args.steps
    needed = rounds * args.batch
    if len(blocks) < needed:
        raise SystemExit(f"--steps/--batch: need {needed} blocks, the corpus packs into {len(blocks)}")
    start = time.perf_counter()
    premask(blocks, tokenizer, copies=args.copies, probability=0.15, seed=0)
    premask_seconds = time.perf_counter() - start
    sample = blocks[:needed]
    masked = premask(sample, tokenizer, copies=1, probability=0.15, seed=0)[0]
    # The unmasked rows as run_mlm.py feeds its collator: with a precomputed special_tokens_mask column.
    plain = Dataset.from_dict({"input_ids": sample.tolist(), "attention_mask": np.ones_like(sample).tolist(),
                               "token_type_ids": np.zeros_like(sample).tolist(),
                               "special_tokens_mask": np.isin(sample, tokenizer.all_special_ids).astype(int).tolist()})
    print(f"corpus: {source}; {len(blocks):,} blocks of {args.length}")
    print(f"MiniLM, batch {args.batch} x {args.length} tokens, {args.threads} threads, {device}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per variant, interleaved")

    bench = Bench(tokenizer, plain, masked, device)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        rows = range(r * args.batch, (r + 1) * args.batch)
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]  # rotate who goes first
        for variant in order:
            seconds = timed(lambda: bench.step(variant, rows), device)
            if r >= args.warmup:
                times[variant].append(seconds)

    tokens = args.batch * args.length
    base = statistics.median(times["on-the-fly"])
    print(f"\n{'variant':<19} {'s/step (median)':>15} {'min':>8} {'max':>8} {'tokens/s':>10} {'vs on-the-fly':>14} "
          f"{'paired':>8}")
    for variant in VARIANTS:
        med = statistics.median(times[variant])
        # paired: the median over rounds of on-the-fly's time / this variant's time in the same round (a loaded
        # machine drifts between rounds more than within one)
        paired = statistics.median(a / b for a, b in zip(times["on-the-fly"], times[variant]))
        print(f"{variant:<19} {med:>15.3f} {min(times[variant]):>8.3f} {max(times[variant]):>8.3f} "
              f"{tokens / med:>10.0f} {base / med:>13.2f}x {paired:>7.2f}x")

    rows = [plain[i] for i in range(args.batch)]
    masked_rows = [masked[i] for i in range(args.batch)]
    collator_s, stack_s = [], []
    for _ in range(args.collate_repeats):  # interleaved as well
        collator_s.append(timed(lambda: bench.collator(rows), torch.device("cpu")))
        stack_s.append(timed(lambda: collate_blocks(masked_rows), torch.device("cpu")))
    collator_ms, stack_ms = 1e3 * statistics.median(collator_s), 1e3 * statistics.median(stack_s)
    print(f"\nmasking alone, per batch of {args.batch} (median of {args.collate_repeats}):")
    print(f"  DataCollatorForLanguageModeling  {collator_ms:8.2f} ms  "
          f"({collator_ms / (1e3 * base):.2%} of an on-the-fly step)")
    print(f"  collate_blocks (pre-masked)      {stack_ms:8.2f} ms  ({collator_ms / stack_ms:.1f}x less)")
    per_batch = 1e3 * premask_seconds / (args.copies * len(blocks)) * args.batch
    print(f"  premask, once: {premask_seconds:.2f} s for {args.copies} copies of {len(blocks):,} blocks "
          f"= {per_batch:.2f} ms per batch of {args.batch}")


if __name__ == "__main__":
    main()
