"""The `raytickets mtl` command: flags (shortcuts for MTL config fields), the run, and what it prints.

It prints the plan (tasks, model, seeds, arms, the super ticket chosen per task, or that it trains dense), one
line per (arm, seed) run (stored ones are skipped), and at the end the per-task table: each arm's mean ± std
over seeds, each arm's paired difference from `plain` with its one-sided p-value, and beside each task's gain
the fraction of heads / FFN units / weights its ticket shares with the other tasks' (random expectation in
parentheses).
"""

from __future__ import annotations

import argparse
import json
import time

from ..errors import ConfigError, OneLineParser, one_line
from ..loader import read_config
from .experiment import ARMS, MTLConfig, Plan, load_mtl_config, plan
from .run import results, run
from .tickets import SIGNIFICANCE, TICKET_RULES
from ..analysis.multitask import format_table
from ..rows import RoundRow


# (flag, config field, type, help)
_FLAGS = [
    ("--tickets", "tickets", str, "results root of the single-task tickets (raytickets imp / sweep output)"),
    ("--tasks", "tasks", str, "comma list of GLUE tasks, e.g. sst2,mrpc,rte,cola"),
    ("--seeds", "seeds", str, "comma list of seeds; each needs a ticket of that seed per task"),
    ("--arms", "arms", str, "comma list of " + "; ".join(f"{a.name}: {a.summary}" for a in ARMS.values())),
    ("--alpha", "alpha", float, "task sampling p_t ∝ n_t^alpha over batches per epoch, in (0, 1]; 1 = proportional"),
    ("--steps", "train.max_steps", int, "optimiser steps per run (default: train.epochs sampling cycles)"),
    ("--model", "model", str, "the encoder; must be the tickets' model (default: theirs)"),
    ("--method", "method", str, "which tickets, when the root holds several methods"),
    ("--ticket-rule", "ticket_rule", str, "when a task trains through its best level's ticket, else dense: "
                                          + "; ".join(f"{k}: {v}" for k, v in TICKET_RULES.items())),
    ("--setting", "setting_id", str, "which tickets (setting_id prefix), when a task has several curves; per task: "
                                     "task_settings.TASK=PREFIX"),
    ("--glue-dir", "data.glue_dir", str, "directory in the original GLUE TSV layout"),
    ("--max-train-examples", "data.max_train_examples", int, "seeded subsample of each training split"),
    ("--max-dev-examples", "data.max_dev_examples", int, "seeded subsample of each dev split"),
    ("--max-seq-length", "data.max_seq_length", int, None),
    ("--learning-rate", "train.learning_rate", float, None),
    ("--batch-size", "train.batch_size", int, None),
    ("--workers", "workers", int, "Ray Train workers (DDP, gloo on CPU); 0 = this process"),
    ("--out", "out", str, "results root for the multi-task rows"),
]


def add_parser(subparsers, prog: str | None = None) -> argparse.ArgumentParser:
    """Add the `mtl` subcommand (flags, help, handler) to the `raytickets` parser's subparsers; `prog`: the
    command its usage errors name, when it is not `raytickets mtl` (`python -m raytickets.mtl`)."""
    named = {"prog": prog} if prog else {}
    p = subparsers.add_parser("mtl", help="multi-task learning through shared super tickets (Liang et al. 2021 §5)",
                              **named)
    p.add_argument("--config", help="YAML with an MTL config (flags and overrides win over it)")
    for flag, _, tp, text in _FLAGS:
        p.add_argument(flag, type=tp, help=text)
    p.add_argument("--sweep", action="store_true", help="first run the config's `sweep` section (the tickets)")
    p.add_argument("--dry-run", action="store_true", help="check the config and print the plan (with --sweep, the "
                                                          "sweep's plan and cost too); run nothing")
    p.add_argument("--address", help="Ray cluster address for --workers (default: an embedded local Ray)")
    p.add_argument("--temp-dir", help="embedded Ray only: its temp directory")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="any MTL config field")
    p.set_defaults(func=cmd_mtl)
    return p


def _config(args) -> MTLConfig:
    data = read_config(args.config) if args.config else {}
    flags = [f"{path}={_yaml(getattr(args, flag[2:].replace('-', '_')))}" for flag, path, *_ in _FLAGS
             if getattr(args, flag[2:].replace("-", "_")) is not None]
    return load_mtl_config(base=data, overrides=flags + list(args.overrides))


def _yaml(v) -> str:
    return f"[{v}]" if isinstance(v, str) and "," in v else json.dumps(v)


def cmd_mtl(args) -> int:
    cfg = _config(args)
    if args.sweep and cfg.sweep is None:
        raise ConfigError("--sweep: the config has no sweep section")
    if args.dry_run:
        print(dry_run(cfg, args.sweep))
        return 0
    if args.sweep:
        _run_sweep(cfg, args.address, args.temp_dir)
    started = time.time()

    def show(arm: str, seed: int, rows: list[RoundRow], saved: bool) -> None:
        if saved:
            print(f"  {arm:13s} seed {seed}: stored, skipped", flush=True)
            return
        cells = ", ".join(f"{r.task} {r.metric_name} {r.metric:.4f}" for r in rows) or "done"
        secs = f" ({rows[0].wall_seconds:.0f} s)" if rows and rows[0].wall_seconds and arm != "single" else ""
        print(f"  {arm:13s} seed {seed}: {cells}{secs}", flush=True)

    p = plan(cfg)
    print(describe(p), flush=True)
    run(p, show, args.address, args.temp_dir)
    table, sharing = results(p)
    print(f"\nmulti-task results ({time.time() - started:.0f} s; experiment {p.setting_id}):")
    print(format_table(table, sharing))
    print(f"results: {cfg.out} (kind mtl; experiment {p.setting_id})")
    return 0


def dry_run(cfg: MTLConfig, sweep: bool) -> str:
    """The plan without running it: with `sweep`, the ticket sweep's plan and cost first; the arms' plan where the
    tickets are there already (else what will be planned once the sweep has written them)."""
    from ..errors import RayticketsError
    from ..store import ResultsStore

    lines = []
    if sweep:
        from ..sweep.cli import dry_run as sweep_dry_run
        from ..sweep.tuner import absolute_paths, validate

        lines.append(sweep_dry_run(absolute_paths(validate(cfg.sweep))))
    try:
        has_rows = not ResultsStore(cfg.tickets_root()).rounds().empty
    except RayticketsError:
        has_rows = False
    if sweep and not has_rows:
        lines.append(f"then raytickets mtl: {len(cfg.tasks)} tasks ({', '.join(cfg.tasks)}), arms {', '.join(cfg.arms)}, "
                     f"seeds {', '.join(map(str, cfg.seeds))}: each task's super ticket is chosen once the sweep has "
                     f"written its tickets to {cfg.tickets_root()}; results: {cfg.out}")
    else:
        lines.append(describe(plan(cfg)))
    return "\n".join(lines)


def describe(p: Plan) -> str:
    """The plan in words: tasks, model, seeds, arms, sampling, steps, and each task's chosen super ticket —
    or, where the rule finds none, that the masked arms train it dense and why."""
    cfg = p.cfg
    steps = f"{cfg.train.max_steps} steps" if cfg.train.max_steps else f"{cfg.train.epochs:g} sampling cycles"
    lines = [f"raytickets mtl: {len(cfg.tasks)} tasks ({', '.join(cfg.tasks)}), model {cfg.model}, seeds "
             f"{', '.join(map(str, cfg.seeds))}, arms {', '.join(cfg.arms)}; alpha {cfg.alpha:g}, {steps} per run, "
             f"{cfg.workers or 'no'} Ray worker(s)",
             f"super tickets (analysis rule: best mean over seeds, ties to the sparser level; ticket_rule "
             f"{cfg.ticket_rule}: {TICKET_RULES[cfg.ticket_rule]}) from {cfg.tickets_root()}:"]
    for r in p.chosen.drop_duplicates("task").to_dict("records"):
        if r["dense"]:
            lines.append(f"  {r['task']:6s} dense ({_why_dense(r, cfg.ticket_rule)})")
            continue
        mean = p.chosen[p.chosen["task"] == r["task"]]["metric"].mean()
        lines.append(f"  {r['task']:6s} {r['method']} setting {str(r['setting_id'])[:8]} sparsity {r['level']:.4f} "
                     f"{r['metric_name']} {mean:.4f} (single-task, these seeds; full model {r['full_mean']:.4f})")
    return "\n".join(lines)


def _why_dense(r: dict, rule: str) -> str:
    from ..analysis.tables import did_not_learn

    if not r["learned"]:  # the analysis judges no level of a curve whose full model did not beat chance
        return f"no super ticket: the full model {did_not_learn(r)}"
    best = (f"best level {r['level']:.4f} ({r['method']} setting {str(r['setting_id'])[:8]}) {r['metric_name']} "
            f"{r['best_mean']:.4f}")
    if rule == "super":
        return f"no super ticket: {best} {'below' if r['best_mean'] < r['full_mean'] else 'not above'} full {r['full_mean']:.4f}"
    p_text = "n/a (fewer than 2 paired seeds)" if r["p_selection"] != r["p_selection"] else f"{r['p_selection']:.3g}"
    return f"no significant super ticket: {best}, full {r['full_mean']:.4f}, p_selection {p_text} (needs < {SIGNIFICANCE:g})"


def _run_sweep(cfg: MTLConfig, address: str | None, temp_dir: str | None) -> None:
    """The `sweep` section as `python -m raytickets.sweep` runs it (an interrupted one resumes)."""
    from ray import tune

    from ..sweep.tuner import absolute_paths
    from ..sweep.tuner import run as run_sweep
    from ..sweep.layout import sweep_dir

    sweep = absolute_paths(cfg.sweep)
    run_sweep(sweep, address, resume=tune.Tuner.can_restore(sweep_dir(sweep)), temp_dir=temp_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m raytickets.mtl ...`: the same command as `raytickets mtl ...`."""
    import os
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = OneLineParser(prog="python -m raytickets.mtl")
    add_parser(parser.add_subparsers(dest="command", required=True), prog=parser.prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv if argv[:1] == ["mtl"] else ["mtl", *argv])
    return one_line(args.func, args)
