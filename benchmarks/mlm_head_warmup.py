"""MiniLM's MLM head warm-up and what it does to the MLM ticket (issue 17 item 5; README, "Masked-language
modelling").

`warmup`: dev accuracy and perplexity of a fresh MLM head on MiniLM, trained alone or with the top encoder layers
(mlm_head.warm_up_head) on the GLUE-sentence corpus; every spec is `layers,learning_rate,steps,every`, the
plateau rule is off so each runs its steps.
`trajectory`: a short MLM IMP trajectory (two rounds of 30%) from the warmed model; the run log's ticket lines
carry `oneshot_diff`, the share of the ticket's pruned weights one-shot magnitude pruning of the rewind weights
would keep (0: the ticket is one-shot pruning).

    python benchmarks/mlm_head_warmup.py warmup 0,3e-3,150,50 1,3e-3,150,50 2,1e-3,150,50
    python benchmarks/mlm_head_warmup.py trajectory --steps 40 --warmup-steps 150 --work /tmp/mlm-traj
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["warmup", "trajectory"])
    ap.add_argument("specs", nargs="*", help="warmup: layers,learning_rate,steps,every")
    ap.add_argument("--glue-dir", default="../shared/glue")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--train-blocks", type=int, default=800)
    ap.add_argument("--dev-blocks", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--steps", type=int, default=40, help="trajectory: optimiser steps per round")
    ap.add_argument("--learning-rate", type=float, default=5e-5, help="trajectory: BERT-Tickets' MLM rate")
    ap.add_argument("--rate", type=float, default=0.3, help="trajectory: the fraction pruned each of two rounds")
    ap.add_argument("--warmup-steps", type=int, default=150)
    ap.add_argument("--warmup-layers", type=int, default=0)
    ap.add_argument("--warmup-lr", type=float, default=3e-3)
    ap.add_argument("--work", default="/tmp/mlm-head-warmup")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "warmup":
        from raytickets.mlm import mlm_splits
        from raytickets.mlm_head import load_mlm_model, warm_up_head
        from raytickets.models import load_tokenizer

        splits = mlm_splits(load_tokenizer("minilm"), "minilm", None, args.glue_dir, args.length, args.train_blocks,
                            args.dev_blocks, 0, 10, 0.15, args.cache)
        for spec in args.specs:
            layers, lr, steps, every = spec.split(",")
            model = load_mlm_model("minilm", seed=0)
            w = warm_up_head(model, splits["train"], splits["dev"], max_steps=int(steps), layers=int(layers),
                             learning_rate=float(lr), batch_size=args.batch, eval_batch_size=64, seed=0,
                             every=int(every), min_gain=-1.0, min_nats=-1e9)
            print(f"layers {layers} lr {lr}: {w.line()}", flush=True)
        return
    from raytickets.config import DataConfig, PruneConfig, TicketConfig, TrainConfig
    from raytickets.tickets import Trajectory, round_lines

    cfg = TicketConfig(
        task="mlm", model="minilm",
        data=DataConfig(glue_dir=args.glue_dir, max_seq_length=args.length, max_train_examples=args.train_blocks,
                        max_dev_examples=args.dev_blocks, cache_dir=args.cache),
        train=TrainConfig(max_steps=args.steps, batch_size=args.batch, grad_accumulation=1,
                          learning_rate=args.learning_rate, weight_decay=0.0, warmup_ratio=0.0,
                          mlm_warmup_steps=args.warmup_steps, mlm_warmup_layers=args.warmup_layers,
                          mlm_warmup_learning_rate=args.warmup_lr, progress=False, threads=args.threads),
        prune=PruneConfig(rate=args.rate, rounds=2),
    )
    started = time.perf_counter()
    traj = Trajectory(cfg, args.work)
    traj.run(on_round=lambda s: [print(line, f"[{time.perf_counter() - started:.0f}s]", flush=True)
                                 for line in round_lines(s)])
    warmup = traj.dir / "warmup.json"
    print("warm-up:", warmup.read_text() if warmup.exists() else "none (the checkpoint has an MLM head)")


if __name__ == "__main__":
    main()
