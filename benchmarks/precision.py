"""bf16 (and fp16) autocast against fp32 on this machine: a MiniLM training step and an evaluation batch, timed
side by side (interleaved, medians), then the dev accuracy of the same SST-2 run under each precision.

    python benchmarks/precision.py [--steps 6 --batch 32 --length 128 --threads 2 --train-rows 2000 --epochs 1]

Prints the step and eval times, their ratios to fp32, a torch.profiler table of the bf16 training step's
most expensive operators (what stays in fp32 or runs on slow kernels), whether torch uses AMX here, and the
accuracies. The precision is train.precision: weights, mask and optimiser stay fp32 under every setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import default_glue_dir  # noqa: E402
from raytickets.models import MINILM, load_model  # noqa: E402
from raytickets.precision import autocast, bf16_native  # noqa: E402


def batch_of(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (batch, length), generator=g),
            "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch,), generator=g)}


class Variant:
    def __init__(self, precision: str):
        self.precision = precision
        self.model = load_model(MINILM, 2, seed=0)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.train_times: list[float] = []
        self.eval_times: list[float] = []

    def train_step(self, batch) -> None:
        self.model.train()
        start = time.perf_counter()
        with autocast(self.precision, torch.device("cpu")):
            loss = self.model(**batch).loss
        loss.float().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.train_times.append(time.perf_counter() - start)

    @torch.no_grad()
    def eval_step(self, batch) -> None:
        self.model.eval()
        start = time.perf_counter()
        with autocast(self.precision, torch.device("cpu")):
            self.model(**{k: v for k, v in batch.items() if k != "labels"})
        self.eval_times.append(time.perf_counter() - start)


def timings(args) -> list[Variant]:
    variants = [Variant(p) for p in args.precisions]
    batch = batch_of(args.batch, args.length, 0)
    for i in range(args.warmup + args.steps):
        order = variants[i % len(variants):] + variants[:i % len(variants)]  # rotate who goes first
        for v in order:
            v.train_step(batch)
            v.eval_step(batch)
    for v in variants:
        v.train_times, v.eval_times = v.train_times[args.warmup:], v.eval_times[args.warmup:]
    return variants


def profile(precision: str, args) -> str:
    v = Variant(precision)
    batch = batch_of(args.batch, args.length, 1)
    v.train_step(batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False) as prof:
        v.train_step(batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def accuracy(precision: str, args) -> tuple[float, float]:
    from raytickets.config import DataConfig, TicketConfig, TrainConfig
    from raytickets.tickets import prepare
    from raytickets.train import finetune

    cfg = TicketConfig(task="sst2", model=MINILM,
                       data=DataConfig(glue_dir=args.glue_dir, max_train_examples=args.train_rows, max_seq_length=64),
                       train=TrainConfig(learning_rate=1e-4, epochs=args.epochs, batch_size=32, precision=precision,
                                         progress=False))
    prep = prepare(cfg)
    res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, cfg.train)
    return res.metrics["accuracy"], res.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--glue-dir", default=default_glue_dir())
    p.add_argument("--no-accuracy", action="store_true", help="timings only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 (AMX): {bf16_native(torch.device('cpu'))}, threads {args.threads}")
    variants = timings(args)
    base = next(v for v in variants if v.precision == "fp32")
    bt, be = statistics.median(base.train_times), statistics.median(base.eval_times)
    print(f"\nMiniLM, batch {args.batch}, length {args.length}: median of {args.steps} (interleaved)")
    print(f"{'precision':>9} {'train s/step':>12} {'train / fp32':>12} {'eval s/batch':>12} {'eval / fp32':>11}")
    for v in variants:
        t, e = statistics.median(v.train_times), statistics.median(v.eval_times)
        print(f"{v.precision:>9} {t:12.3f} {t / bt:12.3f} {e:12.3f} {e / be:11.3f}")
    print("\nbf16 training step, top operators by self CPU time:")
    print(profile("bf16", args))
    if not args.no_accuracy:
        print(f"SST-2 dev accuracy, MiniLM, {args.train_rows} training rows, {args.epochs} epoch(s), length 64:")
        for precision in args.precisions:
            acc, seconds = accuracy(precision, args)
            print(f"  {precision:>5}: accuracy {acc:.4f}  ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
