"""Why gradual movement pruning collapsed in the methods comparison (docs/concepts.md): what a movement mask does
to the model at the moment it is applied, against random and magnitude masks of the same sparsity.

MiniLM fine-tunes `--steps` steps on SST-2 (23: the gradual run's first mask update, step 13 + 10), accumulating
movement scores S = -sum_t w * dL/dw as raytickets' `movement` method does; then each of movement, random and
magnitude scores prunes the prunable weights globally to each sparsity, with no training after it. Printed per
mask: dev accuracy, and how far the masked layers move their units' mean pre-activation (pre-bias, over the dev
tokens), in units of that unit's standard deviation in the unpruned model:
- `own layer`: each layer alone, on the unpruned model's inputs (what the mask does to that layer);
- `network`: every layer in the pruned model (what reaches it through the layers below as well).
A mask that keeps weights whose contributions push one way and drops those that push the other shifts the means;
one that drops weights regardless of their contribution's sign mostly shrinks them.

    python benchmarks/movement_probe.py [--steps 23 --sparsities 0.15,0.5 --train-rows 1000 --dev-rows 300]
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from common import default_glue_dir
from raytickets.models import encoder, load_model, load_tokenizer, prunable_parameters
from raytickets.pruning.movement import Movement, MovementHparams
from raytickets.tasks import get_task, load_split


def rows(glue_dir: str, split: str, n: int, seed: int) -> tuple[list[str], list[int]]:
    data = load_split(get_task("sst2"), split, glue_dir)
    order = list(range(len(data)))
    if split == "train":
        random.Random(seed).shuffle(order)
    order = order[:n]
    return [data[i]["text_a"] for i in order], [int(data[i]["label"]) for i in order]


def layer_io(model, modules: dict, batches: list[dict]) -> tuple[dict, dict]:
    """Each module's input and pre-bias output over `batches` ([tokens, features]), in eval mode."""
    ins, outs, hooks = {}, {}, []
    for name, module in modules.items():
        def hook(mod, args, out, name=name):
            x = args[0].reshape(-1, args[0].shape[-1])
            ins.setdefault(name, []).append(x)
            outs.setdefault(name, []).append(x @ mod.weight.T)
        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in ins.items()}, {n: torch.cat(v) for n, v in outs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=23)
    ap.add_argument("--sparsities", default="0.15,0.5")
    ap.add_argument("--train-rows", type=int, default=1000)
    ap.add_argument("--dev-rows", type=int, default=300)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--glue-dir", default=default_glue_dir())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = load_tokenizer("minilm")
    tokens = lambda xs: dict(tok(xs, padding=True, truncation=True, max_length=64, return_tensors="pt"))  # noqa: E731
    train_x, train_y = rows(args.glue_dir, "train", args.train_rows, args.seed)
    dev_x, dev_y = rows(args.glue_dir, "dev", args.dev_rows, args.seed)
    dev = [tokens(dev_x[i:i + 50]) for i in range(0, len(dev_x), 50)]

    model = load_model("minilm", 2, seed=args.seed)
    params = prunable_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    movement = Movement(MovementHparams(trajectory="gradual"), None)  # the method's own score accumulation
    model.train()
    for step in range(args.steps):
        lo = step * 32 % len(train_x)
        loss = F.cross_entropy(model(**tokens(train_x[lo:lo + 32])).logits, torch.tensor(train_y[lo:lo + 32]))
        opt.zero_grad()
        loss.backward()
        movement.observe(params)
        opt.step()
    model.eval()

    def accuracy() -> float:
        with torch.no_grad():
            pred = torch.cat([model(**b).logits.argmax(-1) for b in dev])
        return float((pred == torch.tensor(dev_y)).float().mean())

    modules = {n: encoder(model).get_submodule(n.rsplit(".", 1)[0]) for n in params}
    base_in, base_out = layer_io(model, modules, dev[:2])
    std = {n: base_out[n].std(0) + 1e-6 for n in params}
    weights = {n: p.detach().clone() for n, p in params.items()}
    g = torch.Generator().manual_seed(args.seed)
    scores = {"movement": movement.movement, "random": {n: torch.rand(p.shape, generator=g) for n, p in params.items()},
              "magnitude": {n: w.abs() for n, w in weights.items()}}
    print(f"MiniLM after {args.steps} steps on {args.train_rows} SST-2 rows: dev accuracy {accuracy():.4f} "
          f"({args.dev_rows} rows)")
    print("sparsity  scores     accuracy  mean shift / std: own layer  network")
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        for name, sc in scores.items():
            flat = torch.cat([s.flatten() for s in sc.values()])
            threshold = flat.kthvalue(int(sparsity * flat.numel())).values
            masks = {n: sc[n] > threshold for n in params}
            own = torch.stack([((base_in[n] @ (weights[n] * masks[n] - weights[n]).T).mean(0).abs() / std[n]).mean()
                               for n in params]).mean()
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(weights[n] * masks[n])
            acc = accuracy()
            _, out = layer_io(model, modules, dev[:2])
            network = torch.stack([((out[n].mean(0) - base_out[n].mean(0)).abs() / std[n]).mean() for n in params])
            print(f"{sparsity:8.2f}  {name:9s}  {acc:8.4f}  {float(own):25.3f}  {float(network.mean()):7.3f}", flush=True)
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(weights[n])


if __name__ == "__main__":
    main()
