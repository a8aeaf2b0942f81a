"""Throughput on one GPU: fp32 vs bf16 vs 2:4 semi-structured, and raytickets' masked step against a dense step and
a plain Hugging Face `Trainer`.

Part `precision` (issue 22): the packaged MiniLM (or `--minilm DIR`, e.g. the bf16 copy benchmarks/gpu_check.py
writes) and BERT-base's shape (random init, no download: throughput does not depend on the weights), length 128:

  fp32         - a training step (AdamW, fused on CUDA) and an eval batch, no autocast;
  bf16         - the same under bf16 autocast (train.precision: bf16; the default on compute capability >= 8);
  bf16 weights - eval only: the model cast to bf16 (no autocast), its prunable weights pruned 2:4 by magnitude
                 (raytickets.pruning.nm) and kept dense: the baseline of
  bf16 2:4     - eval only: the same weights as `torch.sparse.to_sparse_semi_structured` tensors (sparse tensor
                 cores, compute capability >= 8.0). torch's semi-structured tensors run the forward only, so no
                 training row (torchao's sparse training sparsifies activations instead).

Part `loop`: BERT-base, length 128, bf16 autocast:

  dense    - raytickets.train.finetune with no mask;
  masked   - the same with a 50% random mask (gradients of pruned weights zeroed, the mask re-applied after
             every step: what every ticket round costs);
  hf       - transformers.Trainer on the same model, batch and precision (bf16=True), its own loop.

Every variant runs --steps after --warmup (CUDA synchronised around the timed part), variants interleaved over
--repeats; printed: seconds, tokens/s and time ratios side by side (precision: to fp32, 2:4 to the bf16 weights;
loop: masked/dense, dense/HF, MFU = achieved FLOP/s over --peak-tflops, FLOPs per token 6 x parameters + the
attention's 12 x layers x length x hidden). Loop targets: masked/dense >= 0.97, raytickets >= 0.95 x the HF loop,
MFU >= 35%. Both parts run in under 5 minutes on an H100/H200. Without CUDA it exits with one line;
`--cpu-check` runs every code path but 2:4 on the CPU at toy sizes (a check of the script, no figures to read).

    python benchmarks/gpu_throughput.py [--part precision|loop|all] [--minilm minilm|DIR] [--steps 50 --warmup 10
        --repeats 3 --batch 32 --length 128] [--peak-tflops 989] [--compile] [--fp32] [--cpu-check]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)  # --cpu-check


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_bert(shape: dict, device: torch.device, seed: int = 0):
    """A randomly initialised BertForSequenceClassification of `shape` (BERT-base's unless --cpu-check)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **shape)
    return BertForSequenceClassification(config).to(device)


def batch_of(batch: int, length: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"input_ids": torch.randint(1000, 30000, (batch, length), generator=g),
           "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
           "attention_mask": torch.ones(batch, length, dtype=torch.long),
           "labels": torch.randint(0, 2, (batch,), generator=g)}
    return {k: v.to(device) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------- precision


def train_timer(model, precision: str, batch, device):
    """A closure running one optimiser step of `model` under `precision` (autocast as raytickets.train does)."""
    from raytickets.precision import autocast

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    model.train()

    def step() -> None:
        with autocast(precision, device):
            loss = model(**batch).loss
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def eval_timer(model, precision: str, batch, device):
    """A closure running one no-grad forward of `model` (autocast for fp32/bf16; none for a bf16-cast model)."""
    from raytickets.precision import autocast

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()

    @torch.no_grad()
    def step() -> None:
        with autocast(precision, device):
            model(**inputs)

    return step


def two_four(model, device) -> tuple[object, object | None, str]:
    """(bf16 model with its prunable weights pruned 2:4 by magnitude, dense; the same with semi-structured weights
    or None; why not). The dense twin holds the very same values, so the two differ in the kernel alone."""
    from raytickets.masks import Mask
    from raytickets.models import ENCODER_INCLUDE, prunable_parameters
    from raytickets.pruning.nm import pattern_prune

    dense = copy.deepcopy(model).to(torch.bfloat16).eval()
    params = prunable_parameters(dense, ENCODER_INCLUDE)
    scores = {n: p.detach().float().abs().cpu() for n, p in params.items()}
    mask = pattern_prune(Mask.ones_like(params), 0.5, "per_tensor", scores, 2, 4)
    mask.apply(params)
    if device.type != "cuda":
        return dense, None, "CUDA only"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return dense, None, f"compute capability {torch.cuda.get_device_capability(device)} < 8.0"
    convert = getattr(torch.sparse, "to_sparse_semi_structured", None)
    if convert is None:
        return dense, None, f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    sparse = copy.deepcopy(dense)
    try:
        for name, _ in prunable_parameters(sparse, ENCODER_INCLUDE).items():
            linear = sparse.bert.get_submodule(name.rsplit(".", 1)[0])
            linear.weight = torch.nn.Parameter(convert(linear.weight.detach()), requires_grad=False)
        sparse(**batch_of(2, 64, device))  # the first call picks the kernel; a shape it refuses fails here
    except (RuntimeError, NotImplementedError, ValueError) as e:
        return dense, None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return dense, sparse, ""


def time_interleaved(steps: dict[str, object], args, device) -> dict[str, float]:
    """Median seconds per call of each closure: --warmup calls, then --steps timed, rotated over --repeats."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            for _ in range(args.warmup):
                steps[name]()
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    return {k: statistics.median(v) for k, v in times.items()}


def precision_part(args, device) -> None:
    from raytickets.models import load_model

    shape = TINY if args.cpu_check else BERT_BASE
    makers = {"MiniLM": lambda: load_model(args.minilm, 2, seed=0).to(device),
              "BERT-base" if not args.cpu_check else "tiny BERT": lambda: random_bert(shape, device)}
    batch = batch_of(args.batch, args.length, device)
    tokens = args.batch * args.length
    print(f"\n{device_name(device)}: batch {args.batch}, length {args.length}; median of {args.repeats} x "
          f"{args.steps} steps; time ratios side by side (lower is faster)")
    print(f"{'model':>10} {'variant':>13} {'train s/step':>12} {'tokens/s':>9} {'/ fp32':>7} "
          f"{'eval s/batch':>12} {'tokens/s':>9} {'/ fp32':>7}")
    for label, make in makers.items():
        train = {p: train_timer(make(), p, batch, device) for p in ("fp32", "bf16")}
        base = make()
        dense24, sparse24, why = two_four(base, device)
        evals = {"fp32": eval_timer(base, "fp32", batch, device), "bf16": eval_timer(base, "bf16", batch, device),
                 "bf16 weights": eval_timer(dense24, "fp32", batch, device)}
        if sparse24 is not None:
            evals["bf16 2:4"] = eval_timer(sparse24, "fp32", batch, device)
        t = time_interleaved(train, args, device)
        e = time_interleaved(evals, args, device)
        for name in evals:
            cells = (f"{t[name]:12.4f} {tokens / t[name]:9.0f} {t[name] / t['fp32']:7.3f}" if name in t
                     else f"{'-':>12} {'-':>9} {'-':>7}")
            print(f"{label:>10} {name:>13} {cells} {e[name]:12.4f} {tokens / e[name]:9.0f} {e[name] / e['fp32']:7.3f}")
        if sparse24 is not None:
            print(f"{label:>10} 2:4 / dense bf16 weights, eval: {e['bf16 2:4'] / e['bf16 weights']:.3f}")
        else:
            print(f"{label:>10} bf16 2:4: not run ({why})")
        del train, evals, base, dense24, sparse24
        if device.type == "cuda":
            torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU (check only, {device})"


# ---------------------------------------------------------------------------------------------------- loop


def dataset(rows: int, length: int):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (rows, length), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "token_type_ids": [[0] * length] * rows,
                              "attention_mask": [[1] * length] * rows,
                              "labels": torch.randint(0, 2, (rows,), generator=g).tolist()})


def collate(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def ours(masked: bool, data, args, device) -> float:
    """Seconds per optimiser step of raytickets.train.finetune (timed steps only)."""
    from raytickets.config import TrainConfig
    from raytickets.masks import Mask
    from raytickets.models import prunable_parameters
    from raytickets.pruning import random_prune
    from raytickets.tasks import get_task
    from raytickets.train import finetune

    model = random_bert(TINY if args.cpu_check else BERT_BASE, device)
    params = prunable_parameters(model)
    mask = random_prune(Mask.ones_like(params), 0.5, "global", torch.Generator().manual_seed(0)) if masked else None
    marks: list[float] = []

    def on_step(step: int, loss: float) -> None:
        if step in (args.warmup, args.warmup + args.steps):
            sync(device)
            marks.append(time.perf_counter())

    cfg = TrainConfig(learning_rate=1e-5, batch_size=args.batch, max_steps=args.warmup + args.steps,
                      precision="fp32" if args.fp32 else "bf16", compile=args.compile, progress=False,
                      eval_batch_size=args.batch, warmup_ratio=0.0)
    finetune(model, get_task("sst2"), data, {"dev": data.select(range(args.batch))}, collate, cfg, mask,
             params if masked else None, on_step=on_step)
    return (marks[1] - marks[0]) / args.steps


def hf(data, args, device) -> float:
    """Seconds per optimiser step of transformers.Trainer on the same model and batch (timed steps only)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                sync(device)
                marks.append(time.perf_counter())

    training = TrainingArguments(output_dir="/tmp/gpu_throughput_hf", per_device_train_batch_size=args.batch,
                                 max_steps=args.warmup + args.steps, bf16=not args.fp32, learning_rate=1e-5,
                                 logging_strategy="no", save_strategy="no", report_to=[],
                                 dataloader_num_workers=0 if args.cpu_check else 2, use_cpu=device.type == "cpu",
                                 torch_compile=args.compile, max_grad_norm=1.0)
    model = random_bert(TINY if args.cpu_check else BERT_BASE, device)
    Trainer(model=model, args=training, train_dataset=data, data_collator=collate, callbacks=[Clock()]).train()
    return (marks[1] - marks[0]) / args.steps


def loop_part(args, device) -> None:
    import importlib.util

    data = dataset(args.batch * (args.warmup + args.steps), args.length)
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    if importlib.util.find_spec("accelerate"):  # transformers.Trainer needs it; raytickets does not
        times["hf"] = []
    for r in range(args.repeats):
        order = list(times)[r % len(times):] + list(times)[:r % len(times)]  # rotate who goes first
        for name in order:
            times[name].append(hf(data, args, device) if name == "hf" else ours(name == "masked", data, args, device))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    shape = TINY if args.cpu_check else BERT_BASE
    params = sum(p.numel() for p in random_bert(shape, torch.device("cpu")).parameters())
    flops_per_token = 6 * params + 12 * shape["num_hidden_layers"] * args.length * shape["hidden_size"]
    tokens = args.batch * args.length
    print(f"\n{device_name(device)}, {'tiny BERT' if args.cpu_check else 'BERT-base'} ({params / 1e6:.1f}M "
          f"parameters), batch {args.batch}, length {args.length}, {'fp32' if args.fp32 else 'bf16'}"
          f"{', compiled' if args.compile else ''}; median of {args.repeats} x {args.steps} steps")
    print(f"{'variant':>8} {'s/step':>8} {'tokens/s':>10} {'MFU':>6}")
    median = {k: statistics.median(v) for k, v in times.items()}
    for name, t in median.items():
        mfu = flops_per_token * tokens / t / (args.peak_tflops * 1e12)
        print(f"{name:>8} {t:8.4f} {tokens / t:10.0f} {mfu:6.1%}")
    print(f"masked / dense throughput: {median['dense'] / median['masked']:.3f} (target >= 0.97)")
    if "hf" in median:
        print(f"dense / HF Trainer throughput: {median['hf'] / median['dense']:.3f} (target >= 0.95)")
    else:
        print("HF Trainer: not run (transformers.Trainer needs accelerate, not installed here)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["precision", "loop", "all"], default="all")
    p.add_argument("--minilm", default="minilm", help="the MiniLM to load: minilm (packaged) or a model directory")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--fp32", action="store_true", help="loop part: no autocast (MFU is against the bf16 peak anyway)")
    p.add_argument("--cpu-check", action="store_true",
                   help="run the code paths on CPU at toy sizes (2 steps, batch 4, length 32, a tiny BERT)")
    args = p.parse_args()
    if args.cpu_check:
        args.steps, args.warmup, args.repeats, args.batch, args.length = 2, 1, 1, 4, 32
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_throughput: no CUDA device here; run it on a GPU machine (--cpu-check tests the script)")
    else:
        device = torch.device("cuda")
    if args.part in ("precision", "all"):
        precision_part(args, device)
    if args.part in ("loop", "all"):
        loop_part(args, device)


if __name__ == "__main__":
    main()
