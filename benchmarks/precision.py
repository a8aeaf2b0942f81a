"""bf16 (and fp16) autocast against fp32 on this machine, and raytickets' cheaper CPU dropout masks against
torch's: a MiniLM training step and an evaluation batch, timed side by side (interleaved, medians), then the dev
accuracy of the same SST-2 run under each precision.

    python benchmarks/precision.py [--steps 6 --batch 32 --length 128 --threads 2 --train-rows 2000 --epochs 1]

Prints the CPU's bf16 flags and the load, the step and eval times of every precision x dropout (`torch`: torch's
dropout, `cheap`: raytickets.dropout, what load_model installs) with their ratios to fp32 with torch's dropout
(the old default), one dropout's forward + backward alone on the step's shapes, torch.profiler tables of the bf16
step under each dropout (what stays in fp32 or runs on slow kernels; the mask draws' self time), and the
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
from raytickets.dropout import Dropout, dropout  # noqa: E402
from raytickets.models import MINILM, load_model  # noqa: E402
from raytickets.precision import autocast, bf16_native, cpu_bf16_isa  # noqa: E402

CLOCK = time.perf_counter  # --clock cpu: time.process_time (this process's CPU seconds; with --threads 1 the
#                            work done, whatever else the shared cores run)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")
MASK_OPS = ("aten::bernoulli_", "aten::random_", "aten::lt")  # torch's mask draw; raytickets.dropout's two


def batch_of(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (batch, length), generator=g),
            "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch,), generator=g)}


def torch_dropout(model):
    """Undo raytickets.dropout.use_cheap_dropout: torch's nn.Dropout and transformers' own sdpa attention."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is Dropout:
                setattr(parent, name, torch.nn.Dropout(child.p))
    model.config._attn_implementation = "sdpa"
    return model


class Variant:
    def __init__(self, precision: str, drop: str = "cheap"):
        self.precision, self.dropout = precision, drop
        self.name = f"{precision}/{drop}"
        model = load_model(MINILM, 2, seed=0)
        self.model = torch_dropout(model) if drop == "torch" else model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.train_times: list[float] = []
        self.eval_times: list[float] = []

    def train_step(self, batch) -> None:
        self.model.train()
        start = CLOCK()
        with autocast(self.precision, torch.device("cpu")):
            loss = self.model(**batch).loss
        loss.float().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.train_times.append(CLOCK() - start)

    @torch.no_grad()
    def eval_step(self, batch) -> None:
        self.model.eval()
        start = CLOCK()
        with autocast(self.precision, torch.device("cpu")):
            self.model(**{k: v for k, v in batch.items() if k != "labels"})
        self.eval_times.append(CLOCK() - start)


def timings(args) -> list[Variant]:
    variants = [Variant(p, d) for p in args.precisions for d in args.dropouts]
    batch = batch_of(args.batch, args.length, 0)
    for i in range(args.warmup + args.steps):
        order = variants[i % len(variants):] + variants[:i % len(variants)]  # rotate who goes first
        for v in order:
            v.train_step(batch)
            v.eval_step(batch)
    for v in variants:
        v.train_times, v.eval_times = v.train_times[args.warmup:], v.eval_times[args.warmup:]
    return variants


def profile(precision: str, drop: str, args) -> tuple[str, float, float]:
    """The top-operator table of one training step, its total self CPU time and its mask draws' self time."""
    v = Variant(precision, drop)
    batch = batch_of(args.batch, args.length, 1)
    v.train_step(batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False) as prof:
        v.train_step(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    masks = sum(e.self_cpu_time_total for e in events if e.key in MASK_OPS) / 1e6
    return events.table(sort_by="self_cpu_time_total", row_limit=10), total, masks


def dropout_alone(args) -> list[tuple[str, float, float]]:
    """(shape, torch s, cheap s): one dropout's forward + backward on the step's two shapes, interleaved, medians.
    Attention probabilities stay float32 under autocast (SDPA's CPU math kernel upcasts); hidden states are bf16."""
    p = 0.1
    shapes = [(f"attention probs [{args.batch},12,{args.length},{args.length}] fp32",
               (args.batch, 12, args.length, args.length), torch.float32),
              (f"hidden [{args.batch},{args.length},384] bf16", (args.batch, args.length, 384), torch.bfloat16)]
    rows = []
    for label, shape, dtype in shapes:
        x = torch.randn(shape, dtype=dtype, requires_grad=True)
        times = {"torch": [], "cheap": []}
        fns = {"torch": lambda: torch.nn.functional.dropout(x, p, True), "cheap": lambda: dropout(x, p, True)}
        for i in range(2 + args.steps):
            for name in (list(fns) if i % 2 else list(fns)[::-1]):
                start = CLOCK()
                fns[name]().backward(torch.ones(shape, dtype=dtype))
                times[name].append(CLOCK() - start)
                x.grad = None
        rows.append((label, *(statistics.median(times[n][2:]) for n in fns)))
    return rows


def cpu_line() -> str:
    flags = set()
    try:
        flags = set(next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        pass
    return (f"CPU bf16 flags: {' '.join(f for f in BF16_FLAGS if f in flags) or 'none (or not Linux)'}; "
            f"raytickets.precision.cpu_bf16_isa: {cpu_bf16_isa()}; torch capability "
            f"{torch.backends.cpu.get_cpu_capability()}; auto precision here: "
            f"{'bf16' if bf16_native(torch.device('cpu')) else 'fp32'}")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


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
    p.add_argument("--dropouts", nargs="+", default=["torch", "cheap"], choices=["torch", "cheap"])
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--glue-dir", default=default_glue_dir())
    p.add_argument("--no-accuracy", action="store_true", help="timings only")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time, robust to a loaded machine with --threads 1")
    args = p.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, {os.cpu_count()} CPUs, {args.clock} clock, {load()}")
    print(cpu_line())
    variants = timings(args)
    base = variants[0]  # fp32 with torch's dropout under the defaults: what every run did before
    bt, be = statistics.median(base.train_times), statistics.median(base.eval_times)
    print(f"\nMiniLM, batch {args.batch}, length {args.length}: median of {args.steps} (interleaved); {load()}")
    print(f"{'variant':>11} {'train s/step':>12} {'train ratio':>11} {'eval s/batch':>12} {'eval ratio':>10}"
          f"   (ratios to {base.name})")
    median = {}
    for v in variants:
        t, e = statistics.median(v.train_times), statistics.median(v.eval_times)
        median[v.name] = t, e
        print(f"{v.name:>11} {t:12.3f} {t / bt:11.3f} {e:12.3f} {e / be:10.3f}")
    for p_ in args.precisions:
        if f"{p_}/torch" in median and f"{p_}/cheap" in median:
            print(f"{p_}: cheap / torch dropout, train step {median[f'{p_}/cheap'][0] / median[f'{p_}/torch'][0]:.3f}")
    for d in args.dropouts:
        if f"fp32/{d}" in median and f"bf16/{d}" in median:
            t32, e32 = median[f"fp32/{d}"]
            t16, e16 = median[f"bf16/{d}"]
            print(f"{d} dropout: bf16 / fp32, train step {t16 / t32:.3f}, eval batch {e16 / e32:.3f}")
    print("\nOne dropout (p 0.1), forward + backward, median s (interleaved):")
    for label, t_torch, t_cheap in dropout_alone(args):
        print(f"  {label:>36}: torch {t_torch:.4f}  cheap {t_cheap:.4f}  cheap / torch {t_cheap / t_torch:.3f}")
    tables = {}
    for d in args.dropouts:
        tables[d] = profile("bf16", d, args)
        print(f"\nbf16 training step, {d} dropout, top operators by self CPU time:")
        print(tables[d][0])
        print(f"self CPU {tables[d][1]:.3f} s, of which mask draws ({', '.join(MASK_OPS)}) {tables[d][2]:.3f} s")
    if len(tables) == 2:
        print(f"profiled bf16 step, cheap / torch dropout: self CPU {tables['cheap'][1] / tables['torch'][1]:.3f}, "
              f"mask draws {tables['cheap'][2] / tables['torch'][2]:.3f}")
    print(load())
    if not args.no_accuracy:
        print(f"\nSST-2 dev accuracy, MiniLM, {args.train_rows} training rows, {args.epochs} epoch(s), length 64, "
              f"raytickets' dropout:")
        accs = {}
        for precision in args.precisions:
            accs[precision], seconds = accuracy(precision, args)
            print(f"  {precision:>5}: accuracy {accs[precision]:.4f}  ({seconds:.0f} s wall, {load()})")
        if "fp32" in accs and "bf16" in accs:
            print(f"  bf16 - fp32: {accs['bf16'] - accs['fp32']:+.4f}")


if __name__ == "__main__":
    main()
