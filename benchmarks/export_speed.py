"""What physically shrinking a structured ticket buys at inference: the masked dense model vs the shrunk one,
in torch and in onnxruntime, latency at batch 1 and throughput at batch 32; with `--int8`, real SST-2 tickets in
ONNX Runtime, fp32 against int8, with the dev accuracy of each.

Default: the packaged MiniLM with 40% of its attention heads and 40% of its FFN neurons removed by a seeded
random structured mask (speed depends on the shapes left, not on which units were chosen); `--export DIR`
times an `raytickets export --format hf` directory of a structured ticket instead (its model.safetensors and
shrunk/). The four variants run interleaved (rotating which goes first) for several repeats, so machine noise
hits all alike; medians are printed side by side with parameter and FLOP counts, and the logits are checked
equal first (what the timings are worth). `--unstructured 0.5` adds the dense model with half its prunable
weights zeroed: what an unstructured ticket costs on CPU.

    python benchmarks/export_speed.py [--repeats 7 --warmup 2 --length 128 --threads 2 --export DIR]

`--int8` (issue 22): ONNX Runtime on the CPU only, every variant exported by raytickets' own code and timed side
by side as above: the dense fp32 model (the trajectory's fine-tuned full model, round 0) and its int8 graph; a
structured ticket (40% of heads and FFN neurons, importance-pruned and retrained: `raytickets imp --method
structured`), shrunk, in fp32, dynamic int8 and static int8 (`raytickets export --quantize int8 / int8-static`);
and a 2:4 magnitude ticket (`--pattern 2:4`) in fp32 and dynamic int8 — which ONNX Runtime's CPU kernels run
dense: no N:M path, its zeros are multiplied like any weight. Each with its accuracy on the whole SST-2 dev set
(872 rows, tokenised as the runs did). The tickets are trained once into `--tickets DIR` (MiniLM, 2,000 SST-2
training rows, one epoch a round; 1.5 hours on this project's 2 shared, busy CPUs) and reused from there. Target: shrunk int8 >= 2.5x dense fp32
at batch 32, within 1 point of the fp32 ticket's accuracy.

    python benchmarks/export_speed.py --int8 [--tickets DIR --glue-dir GLUE --repeats 7 --batches 1,32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_glue_dir  # noqa: E402


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


def medians(variants: dict, vocab: int, args) -> dict[int, dict[str, float]]:
    """Per batch size, each variant's median seconds per call: samples interleaved, rotating who goes first, on
    the same seeded batches."""
    generator = torch.Generator().manual_seed(args.seed)
    names = list(variants)
    out = {}
    for size in (int(b) for b in args.batches.split(",")):
        calls = max(1, 16 // size)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for repeat in range(args.warmup + args.repeats):
            batch = make_batch(vocab, size, args.length, generator)
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotate who goes first
                seconds = timed(variants[name], batch, calls)
                if repeat >= args.warmup:
                    samples[name].append(seconds)
        out[size] = {name: statistics.median(s) for name, s in samples.items()}
    return out


# ---------------------------------------------------------------- --int8: real tickets, fp32 vs int8 in ONNX Runtime

TICKET_TASK = "sst2"
# One trajectory per ticket on the packaged MiniLM: fine-tune (round 0, the dense model), prune once, rewind,
# fine-tune under the mask. Enough SST-2 to learn (about 0.8 dev accuracy), little enough for minutes on 2 CPUs.
TRAINING = ["--task", TICKET_TASK, "--model", "minilm", "--max-train-examples", "2000", "--max-seq-length", "64",
            "--epochs", "1", "--batch-size", "32", "--lr", "1e-4", "--rounds", "1", "--keep-weights", "all",
            "prune.baselines=[]"]
TICKETS = {  # name -> the method flags of its trajectory
    "structured": ["--method", "structured", "--head-fraction", "0.4", "--ffn-fraction", "0.4",
                   "--importance-batches", "4"],
    "2:4": ["--method", "magnitude", "--pattern", "2:4"],
}
TARGET_SPEEDUP, TARGET_POINTS = 2.5, 1.0  # issue 22: shrunk int8 >= 2.5x dense fp32 at batch 32, within 1 point


def trained_tickets(root: Path, glue_dir: str) -> dict:
    """{name: round row} of the results root's tickets and of their shared full model ("dense"), each trajectory
    trained there first when the root has none of its method."""
    from raytickets import cli
    from raytickets.store import ResultsStore

    def tickets_of(method: str):
        if not (root / "rounds").is_dir():
            return None
        rows = ResultsStore(root).rounds()
        rows = rows[(rows.kind == "ticket") & (rows.method == method)]
        return None if rows.empty else rows.sort_values("round").iloc[-1].to_dict()

    out = {}
    for name, flags in TICKETS.items():
        if tickets_of(flags[1]) is None:
            start = time.perf_counter()
            print(f"training the {name} ticket into {root} ...", flush=True)
            assert cli.main(["imp", *TRAINING, *flags, "--glue-dir", glue_dir, "--out", str(root)]) == 0
            print(f"  {time.perf_counter() - start:.0f} s", flush=True)
        out[name] = tickets_of(flags[1])
        if ":" in name:  # the N:M ticket was pruned to the pattern
            assert f'"pattern": "{name}"' in out[name]["settings"], out[name]["settings"]
    rows = ResultsStore(root).rounds()
    out["dense"] = rows[(rows.kind == "full") & (rows.run_id == out["structured"]["run_id"])].iloc[0].to_dict()
    return out


def full_model(root: Path, row: dict):
    """The round-0 fine-tuned model (kind full, every weight kept) that both trajectories share: a round-0 row keeps
    no weights_path; its weights are the trajectory's full-model cache, work/full/<key>/weights.safetensors."""
    from safetensors.torch import load_file

    from raytickets.models import load_model
    from raytickets.tasks import get_task

    [path] = (root / "work" / "full").glob("*/weights.safetensors")  # one: both trajectories train it with one key
    model = load_model(row["model"], get_task(row["task"]).num_labels, seed=int(row["seed"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def int8_variants(root: Path, glue_dir: str, work: Path) -> tuple[dict, dict, dict, int]:
    """({variant: ONNX file}, {variant: ticket it comes from}, {ticket name: Ticket}, vocabulary size), every file
    written by the
    export's code: `raytickets export --format onnx --quantize int8`, then `quantize.quantize` for the static graph
    on the same model.onnx (the CLI's --quantize int8-static would write the same file again)."""
    from raytickets import cli
    from raytickets.export.quantize import Quantize, calibration_feeds, quantize
    from raytickets.export.select import Ticket, find_ticket
    from raytickets.masks import Mask
    from raytickets.store import ResultsStore

    rows = trained_tickets(root, glue_dir)
    store = ResultsStore(root)
    tickets = {name: find_ticket(store, TICKET_TASK, mask_id=rows[name]["mask_id"], seed=int(rows[name]["seed"]))
               for name in TICKETS}
    files = {}
    for name, ticket in tickets.items():
        out = work / name
        assert cli.main(["export", str(root), "--task", TICKET_TASK, "--mask-id", ticket.row["mask_id"], "--seed",
                         str(int(ticket.row["seed"])), "--quantize", "int8", "--out", str(out), "--force"]) == 0
        label = "shrunk" if name == "structured" else name
        files[f"{label} fp32"], files[f"{label} int8 dynamic"] = out / "model.onnx", out / "model_quantized.onnx"
        if name == "structured":
            static = Quantize("int8-static")
            quantize(out / "model.onnx", out / "static.onnx", static,
                     calibration_feeds(ticket, glue_dir, static.calibration_batches))
            files[f"{label} int8 static"] = out / "static.onnx"
    dense = full_model(root, rows["dense"])
    (work / "dense").mkdir(exist_ok=True)
    write_onnx(dense, work / "dense" / "model.onnx")
    quantize(work / "dense" / "model.onnx", work / "dense" / "int8.onnx", Quantize("int8"))
    files = {"dense fp32": work / "dense" / "model.onnx", "dense int8 dynamic": work / "dense" / "int8.onnx", **files}
    tickets["dense"] = Ticket(row=rows["dense"], mask=Mask.ones_like(prunable_parameters(dense)))
    source = {v: "dense" if v.startswith("dense") else "structured" if v.startswith("shrunk") else "2:4" for v in files}
    return files, source, tickets, dense.config.vocab_size


def int8_main(args) -> None:
    from raytickets.export.model import dev_data, dev_metric

    root = Path(args.tickets).expanduser()
    work = Path(tempfile.mkdtemp(prefix="export-speed-int8-"))
    try:
        files, source, tickets, vocab = int8_variants(root, args.glue_dir, work)
        variants = {name: OnnxModel(path, args.threads) for name, path in files.items()}
        dev = dev_data(tickets["structured"], args.glue_dir, full=True)  # one data setting for all: TRAINING
        metric = {name: dev_metric(model, tickets[source[name]], dev) for name, model in variants.items()}
        timings = medians(variants, vocab, args)
        report_int8(args, files, source, tickets, metric, timings, len(dev[1]["dev"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report_int8(args, files, source, tickets, metric, timings, dev_rows: int) -> None:
    names, sizes = list(files), sorted(timings)
    fp32 = {src: metric[next(n for n in names if source[n] == src and n.endswith("fp32"))] for src in set(source.values())}
    print(f"\nONNX Runtime {__import__('onnxruntime').__version__}, CPU, {args.threads} threads; length "
          f"{args.length}; {args.warmup} warmup + {args.repeats} timed samples per variant, interleaved")
    print("tickets: " + ", ".join(f"{k}: {t.row['method']} at sparsity {t.row['sparsity']:.3f}, run {t.row['run_id']}"
                                  for k, t in tickets.items()))
    print(f"\n| variant | file | accuracy ({dev_rows} dev rows) | Δ vs its fp32 | "
          + " | ".join(f"batch {b} | × dense fp32" for b in sizes) + " |")
    print("|---|---:|---:|---:|" + "---:|---:|" * len(sizes))
    for n in names:
        cells = " | ".join(f"{1e3 * timings[b][n]:.1f} ms ({b / timings[b][n]:.0f}/s) | "
                           f"{timings[b]['dense fp32'] / timings[b][n]:.2f}x" for b in sizes)
        print(f"| {n} | {files[n].stat().st_size / 1e6:.1f} MB | {metric[n]:.4f} | "
              f"{100 * (metric[n] - fp32[source[n]]):+.1f} | {cells} |")
    print("\ncells: median latency per batch (sequences per second); × dense fp32: ratio of median latencies. "
          "The 2:4 ticket runs dense in ONNX Runtime on a CPU (no N:M kernels): its speed is the dense model's.")
    big = max(sizes)
    for n in (n for n in names if n.startswith("shrunk int8")):
        speedup = timings[big]["dense fp32"] / timings[big][n]
        points = 100 * (metric[n] - fp32["structured"])
        met = speedup >= TARGET_SPEEDUP and points >= -TARGET_POINTS
        print(f"target ({n}): {speedup:.2f}x dense fp32 at batch {big} (>= {TARGET_SPEEDUP}x), {points:+.1f} points "
              f"vs shrunk fp32 (>= -{TARGET_POINTS}): {'met' if met else 'MISSED'}")


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
    parser.add_argument("--int8", action="store_true", help="real SST-2 tickets in ONNX Runtime: dense, shrunk and "
                        "2:4, fp32 vs int8, with their dev accuracy (see the module docstring)")
    parser.add_argument("--tickets", default=str(Path(tempfile.gettempdir()) / "raytickets-export-speed-tickets"),
                        help="--int8: the results root its tickets are trained into once, then reused")
    parser.add_argument("--glue-dir", default=default_glue_dir(), help="--int8: GLUE TSVs (SST-2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.int8:
        int8_main(args)
        return
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

    names = list(variants)
    ratios = [("shrunk speed-up, torch", "torch dense", "torch shrunk"), ("shrunk speed-up, ort", "ort dense", "ort shrunk"),
              ("ort speed-up, dense", "torch dense", "ort dense")]
    ratios += [(f"{names[-1][6:]} speed-up, torch", "torch dense", names[-1])] if args.unstructured else []
    print(f"\n| batch | {' | '.join(names)} | {' | '.join(r[0] for r in ratios)} |")
    print("|---:|" + "---:|" * (len(names) + len(ratios)))
    for size, med in medians(variants, vocab, args).items():
        cells = " | ".join(f"{1e3 * med[n]:.1f} ms ({size / med[n]:.0f}/s)" for n in names)
        print(f"| {size} | {cells} | " + " | ".join(f"{med[a] / med[b]:.2f}x" for _, a, b in ratios) + " |")
    print("\ncells: median latency per batch (sequences per second); a speed-up is the ratio of median latencies")


if __name__ == "__main__":
    main()
