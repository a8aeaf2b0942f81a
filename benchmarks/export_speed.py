"""What physically shrinking a structured ticket buys at inference: the masked dense model vs the shrunk one,
in torch and in onnxruntime, latency at batch 1 and throughput at batch 32.

Default: the packaged MiniLM with 40% of its attention heads and 40% of its FFN neurons removed by a seeded
random structured mask (speed depends on the shapes left, not on which units were chosen); `--export DIR`
times an `raytickets export --format hf` directory of a structured ticket instead (its model.safetensors and
shrunk/). The four variants run interleaved (rotating which goes first) for several repeats, so machine noise
hits all alike; medians are printed side by side with parameter and FLOP counts, and the logits are checked
equal first (what the timings are worth). `--unstructured 0.5` adds the dense model with half its prunable
weights zeroed: what an unstructured ticket costs on CPU.

    python benchmarks/export_speed.py [--repeats 7 --warmup 2 --length 128 --threads 2 --export DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle threads sleep instead of spinning, in torch (OpenMP, set before torch loads) as in onnxruntime
# (`OnnxModel`): on a shared machine a spinning pool waits at every barrier for a peer the OS has descheduled,
# which made torch 4-20x slower at a load of 6 and swamped the comparison; quiet, it costs little.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from raytickets.export import OnnxModel, load_shrunk, max_logit_gap, write_onnx  # noqa: E402
from raytickets.models import MINILM, load_model, prunable_parameters  # noqa: E402
from raytickets.pruning import random_structured, structured_mask  # noqa: E402
from raytickets.export.shrink import count_parameters, flops_per_sequence, masked, shrink  # noqa: E402


def models(args) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(masked dense, shrunk, description)."""
    if args.export:
        from transformers import AutoModelForSequenceClassification

        dense = AutoModelForSequenceClassification.from_pretrained(args.export).eval()
        return dense, load_shrunk(args.export), f"export {args.export}"
    dense = load_model(MINILM, 2, seed=args.seed).eval()
    heads, neurons, layers = random_structured(dense.config, args.head_fraction, args.ffn_fraction, "neuron",
                                               torch.Generator().manual_seed(args.seed))
    mask = structured_mask(prunable_parameters(dense), dense.config, heads, neurons, layers)
    small, _ = shrink(dense, mask)
    return masked(dense, mask), small, (f"MiniLM, random structured mask: {args.head_fraction:.0%} of heads, "
                                        f"{args.ffn_fraction:.0%} of FFN neurons removed")


def zeroed(dense: torch.nn.Module, sparsity: float, seed: int) -> torch.nn.Module:
    """A copy of the model with a seeded random `sparsity` of its prunable weights set to 0."""
    import copy

    from raytickets.masks import Mask
    from raytickets.pruning import random_prune

    model = copy.deepcopy(dense)
    params = prunable_parameters(model)
    random_prune(Mask.ones_like(params), sparsity, "global", torch.Generator().manual_seed(seed)).apply(params)
    return model


def make_batch(vocab_size: int, batch: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(1000, vocab_size, (batch, length), generator=generator),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, length, dtype=torch.long)}


def timed(model, batch: dict, calls: int) -> float:
    """Seconds per call, over `calls` back-to-back calls (batch 1 calls are short: several per sample)."""
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(calls):
            model(**batch)
        return (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed samples per variant and batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed samples first")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batches", default="1,32", help="comma list of batch sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--head-fraction", type=float, default=0.4)
    parser.add_argument("--ffn-fraction", type=float, default=0.4)
    parser.add_argument("--export", help="an `raytickets export --format hf` directory of a structured ticket")
    parser.add_argument("--unstructured", type=float, metavar="SPARSITY",
                        help="also time the dense model with this fraction of its prunable weights zeroed at random "
                             "(an unstructured ticket's shape): the zeros cost what the weights did")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    dense, small, what = models(args)
    vocab = dense.config.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        write_onnx(dense, Path(tmp) / "dense.onnx")
        write_onnx(small, Path(tmp) / "shrunk.onnx")
        variants = {"torch dense": dense, "torch shrunk": small,
                    "ort dense": OnnxModel(Path(tmp) / "dense.onnx", args.threads),
                    "ort shrunk": OnnxModel(Path(tmp) / "shrunk.onnx", args.threads)}
    gaps = {name: max_logit_gap(m, dense, vocab) for name, m in variants.items() if name != "torch dense"}
    if args.unstructured:
        variants[f"torch {args.unstructured:.0%} zeros"] = zeroed(dense, args.unstructured, args.seed)
    assert max(gaps.values()) < 1e-4, gaps  # the variants compute the same logits

    p_dense, p_small = count_parameters(dense), count_parameters(small)
    f_dense, f_small = flops_per_sequence(dense, args.length), flops_per_sequence(small, args.length)
    print(f"{what}; length {args.length}; {args.threads} threads; {args.warmup} warmup + {args.repeats} timed samples "
          f"per variant, interleaved")
    print(f"parameters: dense {p_dense:,}  shrunk {p_small:,}  ({p_dense / p_small:.2f}x)")
    print(f"FLOPs per sequence: dense {f_dense / 1e9:.3f} G  shrunk {f_small / 1e9:.3f} G  ({f_dense / f_small:.2f}x)")
    print("max |logit - torch dense|: " + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()))

    generator = torch.Generator().manual_seed(args.seed)
    names = list(variants)
    ratios = [("shrunk speed-up, torch", "torch dense", "torch shrunk"), ("shrunk speed-up, ort", "ort dense", "ort shrunk"),
              ("ort speed-up, dense", "torch dense", "ort dense")]
    ratios += [(f"{names[-1][6:]} speed-up, torch", "torch dense", names[-1])] if args.unstructured else []
    print(f"\n| batch | {' | '.join(names)} | {' | '.join(r[0] for r in ratios)} |")
    print("|---:|" + "---:|" * (len(names) + len(ratios)))
    for size in (int(b) for b in args.batches.split(",")):
        calls = max(1, 16 // size)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for repeat in range(args.warmup + args.repeats):
            batch = make_batch(vocab, size, args.length, generator)
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotate who goes first
                seconds = timed(variants[name], batch, calls)
                if repeat >= args.warmup:
                    samples[name].append(seconds)
        med = {name: statistics.median(s) for name, s in samples.items()}
        cells = " | ".join(f"{1e3 * med[n]:.1f} ms ({size / med[n]:.0f}/s)" for n in names)
        print(f"| {size} | {cells} | " + " | ".join(f"{med[a] / med[b]:.2f}x" for _, a, b in ratios) + " |")
    print("\ncells: median latency per batch (sequences per second); a speed-up is the ratio of median latencies")


if __name__ == "__main__":
    main()
