"""The `raytickets` command: finetune, imp, sweep, analyze, report, export, mtl.

Flags are shortcuts for config fields; any field can also be set as `key.sub=value` (e.g.
`train.learning_rate=3e-5 prune.scope=per_tensor`). Pruning flags and their help come from the method and
baseline registries. Bad input is reported as one line, exit code 2, before any model is loaded or any Ray
started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path

from .errors import OneLineParser, RayticketsError, one_line

# The ticket flags: (flag, config field it sets, type, help, only for pruning commands).
_TICKET_FLAGS = [
    ("--task", "task", str, "GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), mlm or squad", False),
    ("--model", "model", str, "minilm (packaged, default), bert-base, bert-large, a directory or a hub id", False),
    ("--metrics", "metrics", str, "glue (GLUE main metrics, default) or paper (Chen et al.'s: MRPC/QQP accuracy, "
                                  "MNLI matched)", False),
    ("--glue-dir", "data.glue_dir", str, "directory in the original GLUE TSV layout (default: Hugging Face hub)", False),
    ("--squad-dir", "data.squad_dir", str, "squad: directory of one train*.json and one dev*.json in the SQuAD JSON "
                                           "layout (default: Hugging Face hub)", False),
    ("--max-train-examples", "data.max_train_examples", int, "seeded subsample of the training split", False),
    ("--max-dev-examples", "data.max_dev_examples", int, "seeded subsample of the dev split", False),
    ("--max-seq-length", "data.max_seq_length", int, None, False),
    ("--epochs", "train.epochs", float, None, False),
    ("--max-steps", "train.max_steps", int, "optimiser steps per fine-tuning run (overrides --epochs)", False),
    ("--learning-rate", "train.learning_rate", float, None, False),
    ("--batch-size", "train.batch_size", int, None, False),
    ("--seed", "train.seed", int, None, False),
    ("--rounds", "prune.rounds", int, None, True),
    ("--rewind-step", "prune.rewind_step", int, "0: pre-trained weights; k: every weight after k steps", True),
    ("--min-gain", "prune.min_gain", float, "end the trajectory once a ticket falls this far below the full model",
     True),
    ("--keep-weights", "keep_weights", str, "which rounds' weights the results root keeps: best (and last), "
                                            "last, all, none", True),
]


def _registry_flags() -> list[tuple[str, str, type, str, bool]]:
    """`--method`, `--baselines` and one flag per setting of every registered pruning method."""
    from .baselines import BASELINES
    from .pruning import METHODS, hparams_fields, owners

    flags = [
        ("--method", "prune.method", str, "; ".join(f"{m}: {c.summary}" for m, c in METHODS.items()), True),
        ("--baselines", "prune.baselines", str, "comma list of " + "; ".join(f"{b}: {v.summary}"
                                                                           for b, v in BASELINES.items()), True),
    ]
    for name, tp, _ in hparams_fields():
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        simple = tp if tp in (int, float) else args[0] if len(args) == 1 and args[0] in (int, float) else str
        flags.append((f"--{name.replace('_', '-')}", f"prune.{name}", simple, f"({', '.join(owners(name))}) "
                      f"prune.{name}" + (f": {', '.join(map(str, typing.get_args(tp)))}"
                                         if typing.get_origin(tp) is typing.Literal else ""), True))
    return flags


def _flags() -> list[tuple[str, str, type, str, bool]]:
    return _TICKET_FLAGS + _registry_flags()


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _add_ticket_flags(p: argparse.ArgumentParser, pruning: bool) -> None:
    from .config import TicketConfig

    p.add_argument("--config", help="YAML file with a ticket config (flags and overrides win over it)")
    template = TicketConfig()
    for flag, path, type_, help_, pruning_only in _flags():
        if pruning or not pruning_only:
            aliases = ("--lr",) if flag == "--learning-rate" else ()
            p.add_argument(flag, *aliases, type=type_, help=_with_default(help_, template, path))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="any config field")


def _with_default(help_: str | None, template, path: str) -> str | None:
    """A flag's help with the config's default for its field (the flag itself defaults to "not given")."""
    value = template
    for part in path.split("."):
        value = getattr(value, part, None)
    if value is None or value == [] or (help_ and "default" in help_):
        return help_
    shown = "none" if value == [] else value
    return f"{help_ or ''} (default: {shown})".strip().replace("%", "%%")


def _ticket_config(args, imp: bool = True):
    from .config import TicketConfig, load
    from .loader import read_config

    data = read_config(args.config) if args.config else {}
    flags = [f"{path}={_yaml_value(getattr(args, _dest(flag)))}" for flag, path, *_ in _flags()
             if getattr(args, _dest(flag), None) is not None]
    return load(TicketConfig, base=data, overrides=flags + list(args.overrides), imp=imp)


def _yaml_value(v) -> str:
    return json.dumps(v) if isinstance(v, str) and "," not in v else str(v)


def cmd_finetune(args) -> int:
    from .config import resolve, to_dict

    cfg = resolve(_ticket_config(args, imp=False))
    if args.random_mask is not None and not 0 <= args.random_mask < 1:
        raise RayticketsError(f"--random-mask: {args.random_mask} must be in [0, 1)")
    if args.mask and not Path(args.mask).is_file():
        raise RayticketsError(f"--mask: file {args.mask!r} does not exist")

    import torch
    from safetensors.torch import save_file

    from .masks import Mask
    from .pruning import random_prune
    from .tickets import prepare, prunable_of
    from .train import finetune, state_copy

    mask = Mask.load(args.mask) if args.mask else None  # a bad file fails before the task is tokenised
    prep = prepare(cfg)
    params = prunable_of(cfg, prep.model)
    if mask is not None:
        mask.validate(params)  # MaskError names the tensor before any training
    elif args.random_mask:
        gen = torch.Generator().manual_seed(cfg.train.seed)
        mask = random_prune(Mask.ones_like(params), args.random_mask, "global", gen)
    res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, cfg.train, mask, params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "task": cfg.task,
        "model": cfg.model,
        "metrics": res.metrics,
        "main_metric": prep.task.main_metric_for(cfg.metrics),
        "sparsity": mask.sparsity() if mask is not None else 0.0,
        "steps": res.steps,
        "seconds": round(res.seconds, 2),
        "config": to_dict(cfg),
    }
    if mask is not None:
        mask.save(out / "mask.safetensors")
    save_file(state_copy(prep.model), str(out / "model.safetensors"))
    _write_json(out / "metrics.json", result)
    print(json.dumps({k: result[k] for k in ("task", "metrics", "sparsity", "steps", "seconds")}, indent=2))
    return 0


def cmd_imp(args) -> int:
    """One trajectory on this machine; `--out` becomes a results root (`raytickets analyze OUT` reads it)."""
    cfg = _ticket_config(args)
    from .results import Recorder
    from .store import ResultsStore
    from .tickets import Trajectory, round_lines

    out = Path(args.out)
    traj = Trajectory(cfg, out / "work")
    print(f"run {traj.id}: {traj.dir}", flush=True)
    recorder = Recorder(ResultsStore(out), cfg.keep_weights, sweep="imp")

    def show(state) -> None:
        recorder(state)
        for line in round_lines(state):
            print(f"  {line}", flush=True)

    rows = traj.run(on_round=show)
    recorder.finish(traj)
    print(imp_table(rows))
    print(f"results: {out} (raytickets analyze {out})")
    return 0


def imp_table(rows) -> str:
    """Round, sparsity, ticket metric, baseline metrics and the full model's metric, one line a round."""
    kinds = [k for k in dict.fromkeys(r.kind for r in rows) if k not in ("full", "ticket")]
    full = next(r.metric for r in rows if r.kind == "full")
    head = f"{'round':>5} {'sparsity':>8} {'ticket':>8} " + " ".join(f"{k:>8}" for k in kinds) + f" {'full':>8}"
    lines = [f"metric: {rows[0].metric_name}", head]
    for r in sorted({r.round for r in rows}):
        at = {row.kind: row for row in rows if row.round == r}
        ticket = at.get("ticket") or at.get("full")
        cells = " ".join(f"{at[k].metric:8.4f}" if k in at else f"{'':>8}" for k in kinds)
        lines.append(f"{r:5d} {ticket.sparsity:8.4f} {ticket.metric:8.4f} {cells} {full:8.4f}")
    return "\n".join(lines)


def cmd_sweep(args) -> int:
    from .sweep.cli import main as sweep_main

    return sweep_main(args.sweep_args)


def cmd_analyze(args) -> int:
    from .analysis.tables import analyze, summary_markdown

    margin = args.min_above_chance
    if margin is not None and not 0 <= margin < 1:  # a metric's scale: accuracy, F1, correlations are within 1
        raise RayticketsError(f"--min-above-chance: {margin} must be in [0, 1) (default: two standard errors at chance "
                              "on each curve's dev examples)")
    tables = analyze(args.results_dir, args.out, min_above_chance=margin)
    print(summary_markdown(tables))
    print(f"tables: {args.out or str(args.results_dir).rstrip('/') + '/analysis'} ({len(tables)} Parquet files)")
    return 0


def cmd_report(args) -> int:
    from .analysis.report import write_report

    path = write_report(args.results_dir, args.out)
    print(f"report: {path}")
    return 0


def _write_json(path: Path, obj) -> None:
    import pyarrow.fs as pafs

    from .store import write_bytes_atomic

    write_bytes_atomic(json.dumps(obj, indent=2, default=str).encode(), pafs.LocalFileSystem(), str(path.resolve()))


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="raytickets", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"raytickets {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("finetune", help="fine-tune one model (optionally under a mask) and evaluate it")
    _add_ticket_flags(f, pruning=False)
    f.add_argument("--mask", help="a mask file (safetensors) to fine-tune under")
    f.add_argument("--random-mask", type=float, metavar="SPARSITY", help="fine-tune under a seeded random mask")
    f.set_defaults(func=cmd_finetune)

    i = sub.add_parser("imp", help="run one ticket trajectory (any registered method) with baselines")
    _add_ticket_flags(i, pruning=True)
    i.set_defaults(func=cmd_imp)

    s = sub.add_parser("sweep", help="the distributed sweep (same as python -m raytickets.sweep)", add_help=False)
    s.add_argument("sweep_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_sweep)

    a = sub.add_parser("analyze", help="super tickets, matching sparsity, overlap and transfer tables")
    a.add_argument("results_dir")
    a.add_argument("--out", help="where the tables go (default RESULTS_DIR/analysis)")
    a.add_argument("--min-above-chance", type=float, metavar="X",
                   help="how far a full model's mean must beat its chance value to have learned, for every curve "
                        "(default: two standard errors of the metric at chance on the curve's dev examples); a curve "
                        "that did not learn has no matching sparsity, super ticket or transfer verdict")
    a.set_defaults(func=cmd_analyze)

    r = sub.add_parser("report", help="HTML report with figures and a Markdown summary")
    r.add_argument("results_dir")
    r.add_argument("--out", help="where the report goes (default RESULTS_DIR/report)")
    r.set_defaults(func=cmd_report)

    from .export.cli import register_cli as register_export

    register_export(sub)  # a stored ticket as a Hugging Face model (shrunk when structured), ONNX, or a mask file
    from .mtl.cli import add_parser as register_mtl

    register_mtl(sub)  # multi-task learning through each task's super ticket (Liang et al. 2021 §5)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raytickets")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed: pip install -e .)"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:  # argparse.REMAINDER refuses a leading option (--config, --help): hand over as is
        from .sweep.cli import main as sweep_main

        return sweep_main(argv[1:], prog="raytickets sweep")
    return dispatch(parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed subcommand: its exit code, or 2 with the one-line error of bad input."""
    return one_line(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
