"""Training throughput on one GPU: raytickets' masked step against a dense step and a plain Hugging Face `Trainer`.

A BERT-base-sized model (random init: throughput does not depend on the weights), length 128, bf16 autocast:

  dense    - raytickets.train.finetune with no mask;
  masked   - the same with a 50% random mask (gradients of pruned weights zeroed, the mask re-applied after
             every step: what every ticket round costs);
  hf       - transformers.Trainer on the same model, batch and precision (bf16=True), its own loop.

Each variant runs --steps optimiser steps after --warmup steps (CUDA synchronised around the timed part),
the variants interleaved over --repeats; printed: tokens/s, step time, masked/dense and dense/HF ratios, and
model FLOP utilisation (MFU = achieved FLOP/s over the GPU's bf16 peak, --peak-tflops; the model's FLOPs per
token are 6 x parameters + the attention's 12 x layers x length x hidden, the usual estimate). Targets:
masked/dense >= 0.97, raytickets >= 0.95 x the HF loop, MFU >= 35%. Runs in under 5 minutes on an H100/H200.

    python benchmarks/gpu_throughput.py [--steps 50 --warmup 10 --repeats 3 --batch 32 --length 128]
        [--peak-tflops 989] [--compile] [--fp32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def model_of(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512)
    return BertForSequenceClassification(config).cuda()


def dataset(rows: int, length: int):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (rows, length), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "token_type_ids": [[0] * length] * rows,
                              "attention_mask": [[1] * length] * rows,
                              "labels": torch.randint(0, 2, (rows,), generator=g).tolist()})


def collate(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def ours(masked: bool, data, args) -> float:
    """Seconds per optimiser step of raytickets.train.finetune (timed steps only)."""
    from raytickets.config import TrainConfig
    from raytickets.masks import Mask
    from raytickets.models import prunable_parameters
    from raytickets.pruning import random_prune
    from raytickets.tasks import get_task
    from raytickets.train import finetune

    model = model_of()
    params = prunable_parameters(model)
    mask = random_prune(Mask.ones_like(params), 0.5, "global", torch.Generator().manual_seed(0)) if masked else None
    marks: list[float] = []

    def on_step(step: int, loss: float) -> None:
        if step in (args.warmup, args.warmup + args.steps):
            torch.cuda.synchronize()
            marks.append(time.perf_counter())

    cfg = TrainConfig(learning_rate=1e-5, batch_size=args.batch, max_steps=args.warmup + args.steps,
                      precision="fp32" if args.fp32 else "bf16", compile=args.compile, progress=False,
                      eval_batch_size=args.batch, warmup_ratio=0.0)
    finetune(model, get_task("sst2"), data, {"dev": data.select(range(args.batch))}, collate, cfg, mask,
             params if masked else None, on_step=on_step)
    return (marks[1] - marks[0]) / args.steps


def hf(data, args) -> float:
    """Seconds per optimiser step of transformers.Trainer on the same model and batch (timed steps only)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                torch.cuda.synchronize()
                marks.append(time.perf_counter())

    training = TrainingArguments(output_dir="/tmp/gpu_throughput_hf", per_device_train_batch_size=args.batch,
                                 max_steps=args.warmup + args.steps, bf16=not args.fp32, learning_rate=1e-5,
                                 logging_strategy="no", save_strategy="no", report_to=[], dataloader_num_workers=2,
                                 torch_compile=args.compile, max_grad_norm=1.0)
    Trainer(model=model_of(), args=training, train_dataset=data, data_collator=collate, callbacks=[Clock()]).train()
    return (marks[1] - marks[0]) / args.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--fp32", action="store_true", help="no autocast (then MFU is against the bf16 peak anyway)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput: no CUDA device here; run it on a GPU machine")
    data = dataset(args.batch * (args.warmup + args.steps), args.length)
    times: dict[str, list[float]] = {"dense": [], "masked": [], "hf": []}
    for r in range(args.repeats):
        order = list(times)[r % 3:] + list(times)[:r % 3]  # rotate who goes first
        for name in order:
            times[name].append(hf(data, args) if name == "hf" else ours(name == "masked", data, args))
            torch.cuda.empty_cache()
    params = sum(p.numel() for p in model_of().parameters())
    flops_per_token = 6 * params + 12 * 12 * args.length * 768
    tokens = args.batch * args.length
    print(f"{torch.cuda.get_device_name()}, BERT-base ({params / 1e6:.1f}M parameters), batch {args.batch}, length "
          f"{args.length}, {'fp32' if args.fp32 else 'bf16'}{', compiled' if args.compile else ''}; median of "
          f"{args.repeats} x {args.steps} steps")
    print(f"{'variant':>8} {'s/step':>8} {'tokens/s':>10} {'MFU':>6}")
    median = {k: statistics.median(v) for k, v in times.items()}
    for name, t in median.items():
        mfu = flops_per_token * tokens / t / (args.peak_tflops * 1e12)
        print(f"{name:>8} {t:8.4f} {tokens / t:10.0f} {mfu:6.1%}")
    print(f"masked / dense throughput: {median['dense'] / median['masked']:.3f} (target >= 0.97)")
    print(f"dense / HF Trainer throughput: {median['hf'] / median['dense']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
