"""Bad input, by kind (issue 20): every case is one line on stderr, exit code 2, no traceback, and nothing written —
the case's folder (inputs, outputs, storage, the tokenised-data cache) is the same file for file after as before.
Each command runs in this process through its `main` (a new Python with torch costs seconds a case); none of these
may start Ray or train, so each case takes well under a second unless it loads a tokenizer or a model."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from raytickets import cli
from raytickets.masks import Mask
from raytickets.mtl import cli as mtl_cli
from raytickets.store import ResultsStore
from raytickets.sweep import cli as sweep_cli

ENTRIES = {"raytickets": cli.main, "sweep": sweep_cli.main, "mtl": mtl_cli.main}
HUGE = "1" * 400  # an integer too large for a float (and for an int64)
SHAPES = {"encoder.layer.0.attention.self.query.weight": (8, 8)}


def call(entry: str, *args) -> tuple[int, str, str]:
    """`raytickets ARGS` (or `python -m raytickets.sweep|mtl ARGS`) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = ENTRIES[entry]([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, tuple | None]:
    """Every entry under `root`: a folder by name, a file by size and mtime (a folder's own mtime is left out: a
    write probe that makes and removes a folder in it changes that, and leaves nothing)."""
    return {str(p.relative_to(root)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def refused(case: Path, entry: str, *args, expected: str) -> str:
    """Run a bad-input command in `case` (its working folder and cache): one line naming `expected`, exit 2, no
    traceback, no stdout, nothing written under `case`."""
    before = snapshot(case)
    code, out, err = call(entry, *args)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(("error: ", "raytickets", "python -m raytickets")) and "error: " in lines[0], lines[0]
    assert expected in lines[0], lines[0]
    assert out == ""
    assert snapshot(case) == before  # nothing written, not even an empty folder
    return lines[0]


@pytest.fixture
def case(tmp_path, monkeypatch) -> Path:
    """A case's folder, with the tokenised-data cache inside it (so that a cache write shows in the snapshot)."""
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("RAYTICKETS_CACHE", str(tmp_path / "cache"))
    return tmp_path


def sweep_yaml(case: Path, glue_dir: Path, extra: str = "") -> Path:
    """A small valid sweep config; `extra` adds or replaces top-level sections."""
    path = case / "sweep.yaml"
    path.write_text(f"""name: bad
storage_path: {case / 'storage'}
ticket:
  task: sst2
  model: minilm
  data: {{glue_dir: {glue_dir}, max_train_examples: 8, max_dev_examples: 8, max_seq_length: 32, cache_dir: {case / 'cache'}}}
  train: {{epochs: 1, batch_size: 4}}
  prune: {{method: magnitude, rounds: 1, rate: 0.5}}
search: {{mode: grid, num_samples: 1, scheduler: none{extra}}}
resources: {{num_workers: 1, cpus_per_worker: 1, num_cpus: 2}}
""")
    return path


def tickets_root(root: Path, tasks=("sst2", "rte"), weights_path: str | None = None) -> Path:
    """A results root of learned minilm curves (full model and a 30% ticket per seed, masks stored), the first
    task's tickets with `weights_path` recorded; written through the store, no training."""
    from analysis.test_analysis import curve_rows, dev_setting

    store = ResultsStore(root)
    rows = []
    for task in tasks:
        rows += curve_rows(task, dev_setting(200), [0.80, 0.81], {0.3: [0.84, 0.85]}, chance_metric=0.51,
                           model="minilm")
    for i, r in enumerate(rows):
        if r["kind"] == "ticket":
            g = torch.Generator().manual_seed(i)
            r["mask_id"] = store.write_mask(Mask({n: torch.rand(s, generator=g) >= 0.3 for n, s in SHAPES.items()}))
            if r["task"] == tasks[0] and weights_path is not None:
                r["weights_path"] = weights_path
    store.write_rounds(rows)
    return root


# ------------------------------------------------------------------------------ tracebacks instead of one line


def test_a_config_file_that_is_not_utf8(case):
    config = case / "ticket.yaml"
    config.write_bytes("task: sst2\n# café\n".encode("latin-1"))
    refused(case, "raytickets", "finetune", "--config", config, "--out", case / "out",
            expected=f"config: {config} is not UTF-8 text (byte 0xe9 on line 2)")


@pytest.mark.parametrize("entry, args, expected", [
    ("raytickets", ["finetune", f"train.epochs={HUGE}"], "train.epochs: 11111111111111111111... (400 characters) is "
                                                          "too large"),
    ("raytickets", ["finetune", "--epochs", "1" + "0" * 400], "train.epochs: inf is not a finite number"),
    ("raytickets", ["imp", "--rounds", "1", f"prune.rate={HUGE}.5"], "prune.rate: inf is not a finite number"),
    ("sweep", ["--dry-run", f"search.num_samples={HUGE}"], "search.num_samples: 11111111111111111111... (400 "
                                                             "characters) is too large; at most 2**63 - 1"),
    ("sweep", ["--dry-run", f"max_failures={'9' * 5000}"], "max_failures: 99999999999999999999... (5000 characters) "
                                                            "is not a number"),
])
def test_a_number_too_large(case, glue_dir, entry, args, expected):
    if entry == "sweep":
        args = ["--config", sweep_yaml(case, glue_dir), *args]
    else:
        args = [*args, "--out", case / "out"]
    refused(case, entry, *args, expected=expected)


@pytest.mark.parametrize("out", ["/proc/raytickets-out", "/proc/self/raytickets-out", "/sys/raytickets-out"])
@pytest.mark.parametrize("command", ["analyze", "report", "export"])
def test_an_out_folder_that_cannot_be_written(case, command, out):
    root = tickets_root(case / "results")
    extra = ["--task", "sst2", "--best", "--format", "mask"] if command == "export" else []
    refused(case, "raytickets", command, root, *extra, "--out", out, expected=f"--out: cannot write to {out}")


def test_a_read_only_out_folder(case):
    """A folder the user may not write to: by its permission bits (not root), else a read-only tmpfs (root)."""
    locked = case / "locked"
    locked.mkdir()
    with read_only(locked):
        root = tickets_root(case / "results")
        for command in ("analyze", "report", "export"):
            extra = ["--task", "sst2", "--best", "--format", "mask"] if command == "export" else []
            refused(case, "raytickets", command, root, *extra, "--out", locked / "out",
                    expected=f"--out: cannot write to {locked / 'out'}")


@contextlib.contextmanager
def read_only(folder: Path):
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    import subprocess

    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("root without mount rights: no read-only folder to test with (/proc and /sys cases cover it)")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("weights, expected", [
    ("weights/bad.safetensors", "weights/bad.safetensors: not a safetensors weights file"),
    ("../outside.safetensors", "rounds.weights_path: '../outside.safetensors' is not a path inside results dir"),
    ("/etc/hostname", "rounds.weights_path: '/etc/hostname' is not a path inside results dir"),
])
def test_a_recorded_weights_path_that_is_no_safetensors_file_or_leaves_the_root(case, weights, expected):
    root = tickets_root(case / "results", weights_path=weights)
    (root / "weights").mkdir()
    (root / "weights" / "bad.safetensors").write_bytes(b"\x80\x04not safetensors, perhaps a pickle")
    save_file({"w": torch.zeros(2)}, str(case / "outside.safetensors"))  # a valid file the row must not reach
    refused(case, "raytickets", "export", root, "--task", "sst2", "--best", "--out", case / "out", expected=expected)


# ------------------------------------------------------------------------- accepted when they must be refused


@pytest.mark.parametrize("name", ["..", ".", "a\tb", "a/b", "a\\b", "a b", "", "x" * 201])
def test_a_sweep_name_that_is_not_one_folder(case, glue_dir, name):
    refused(case, "sweep", "--config", sweep_yaml(case, glue_dir), "--dry-run", f"name={name}",
            expected=f"name: {name!r}")


@pytest.mark.parametrize("command, text, expected", [
    ("finetune", "task: sst2\ntrain:\n  epochs: 1\n  batch_size: 8\n  epochs: 3\n", "key 'epochs' is given twice "
                                                                                     "(lines 3 and 5)"),
    ("finetune", "task: sst2\ntask: rte\n", "key 'task' is given twice (lines 1 and 2)"),
    ("sweep", "name: a\nsearch: {mode: grid, mode: optuna}\n", "key 'mode' is given twice (lines 2 and 2)"),
])
def test_a_yaml_key_given_twice(case, command, text, expected):
    config = case / "dup.yaml"
    config.write_text(text)
    if command == "sweep":
        refused(case, "sweep", "--config", config, "--dry-run", expected=f"config: {config}: {expected}")
    else:
        refused(case, "raytickets", command, "--config", config, "--out", case / "out",
                expected=f"config: {config}: {expected}")


def test_a_yaml_key_given_twice_in_an_override(case):
    refused(case, "raytickets", "finetune", "train={epochs: 1, epochs: 2}", "--out", case / "out",
            expected="override 'train={epochs: 1, epochs: 2}': key 'epochs' is given twice")


@pytest.mark.parametrize("entry", ["raytickets", "mtl"])
def test_mtl_with_one_task(case, entry):
    root = tickets_root(case / "results")
    args = ["--tickets", root, "--tasks", "sst2", "--out", case / "mtl"]
    refused(case, entry, *(["mtl", *args] if entry == "raytickets" else args),
            expected="tasks: only 'sst2'; give two or more of")


@pytest.mark.parametrize("out", ["rounds/x.parquet", ".", "masks", "weights/w"])
def test_export_into_the_results_root(case, out):
    root = tickets_root(case / "results")
    refused(case, "raytickets", "export", root, "--task", "sst2", "--best", "--format", "mask", "--out", root / out,
            expected="is inside the results root")


def test_export_over_the_folder_that_holds_the_results_root(case):
    root = tickets_root(case / "sweep" / "results")
    refused(case, "raytickets", "export", root, "--task", "sst2", "--best", "--format", "mask", "--out",
            case / "sweep", "--force", expected="holds the results root")


# ------------------------------------------ --dry-run passes, the real run refuses only after Ray or a write


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("corpus, expected", [
    ("/no/such/corpus.txt", "ticket.data.corpus: '/no/such/corpus.txt' does not exist"),
    ("{case}/docs", "ticket.data.corpus: directory {case}/docs has no .txt files (found: notes.md)"),
    ("{case}/latin.txt", "ticket.data.corpus: {case}/latin.txt is not UTF-8 text (byte 0xe9 at offset 3)"),
])
def test_an_mlm_corpus_that_cannot_be_read(case, glue_dir, dry_run, corpus, expected):
    (case / "latin.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (case / "docs").mkdir()
    (case / "docs" / "notes.md").write_text("text, but not in a .txt file\n")
    config = sweep_yaml(case, glue_dir)
    flags = ["--dry-run"] if dry_run else []
    refused(case, "sweep", "--config", config, *flags, "ticket.task=mlm",
            f"ticket.data.corpus={corpus.format(case=case)}", expected=expected.format(case=case))


def test_an_mlm_corpus_in_the_search_space(case, glue_dir):
    """The template trains sst2; mlm, a task of the space, reads the template's data: no GLUE split in glue_dir."""
    refused(case, "sweep", "--config", sweep_yaml(case, glue_dir), "--dry-run", f"ticket.data.glue_dir={case}",
            "search.space.task.values=[sst2, mlm]", expected="data.glue_dir")


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("source, sources, expected", [
    ("{case}/missing", "[]", "search.transfer.source: directory '{case}/missing' does not exist"),
    ("{case}/empty", "[]", "search.transfer.source: {case}/empty/rounds: no rounds table"),
    ("{case}/results", "[rte]", "search.transfer.sources: 'rte' has no ticket in '{case}/results'; tasks with "
                                "tickets: sst2"),
])
def test_a_transfer_source_that_is_missing_empty_or_lacks_a_source_task(case, glue_dir, dry_run, source, sources,
                                                                        expected):
    (case / "empty").mkdir()
    tickets_root(case / "results", tasks=("sst2",))
    transfer = f", transfer: {{source: {source.format(case=case)}, sources: {sources}, targets: [rte], levels: [0.3]}}"
    flags = ["--dry-run"] if dry_run else []
    refused(case, "sweep", "--config", sweep_yaml(case, glue_dir, transfer), *flags,
            expected=expected.format(case=case))


# ---------------------------------------------------------------------------------------------- left behind


@pytest.mark.parametrize("text, expected", [
    (b"a few words, far fewer than two blocks\n", "data.corpus: the corpus fills 0 block(s); need at least 2"),
    (b"word " * 14000 + "caf\xe9\n".encode("latin-1"), "data.corpus: {corpus} is not UTF-8 text (byte 0xe9 at offset"),
], ids=["too-small", "bad-byte-past-64KiB"])
def test_an_mlm_corpus_error_found_while_building_leaves_no_lock_or_cache(case, glue_dir, text, expected):
    """Past `check_corpus` (a file that starts as text): the cache is built under its lock, and the error there
    must leave neither the lock file nor the cache folder it made."""
    corpus = case / "corpus.txt"
    corpus.write_bytes(text)
    cache = case / "cache" / "mlm"  # absent: the build would make it
    refused(case, "raytickets", "finetune", "--task", "mlm", f"data.corpus={corpus}", f"data.cache_dir={cache}",
            "--max-seq-length", "32", "--out", case / "out", expected=expected.format(corpus=corpus))
    assert not cache.exists()


def test_finetune_reads_the_mask_file_before_it_tokenises_the_task(case, glue_dir):
    mask = case / "mask.safetensors"
    mask.write_bytes(b"not a mask")
    refused(case, "raytickets", "finetune", "--glue-dir", glue_dir, "--mask", mask, "--out", case / "out",
            expected=f"mask file '{mask}': not a readable raytickets mask")
    assert list((case / "cache").iterdir()) == []  # the task was never tokenised


# ----------------------------------------------------------------------------------------------- misleading


@pytest.mark.parametrize("args, expected", [
    (["--setting", "zzz"], "setting_id: 'zzz' is no setting of sst2's tickets in"),
    (["task_settings.rte=zzz"], "task_settings.rte: 'zzz' is no setting of rte's tickets in"),
])
def test_mtl_with_a_setting_no_ticket_has(case, args, expected):
    root = tickets_root(case / "results")
    line = refused(case, "raytickets", "mtl", "--tickets", root, "--tasks", "sst2,rte", "--out", case / "mtl", *args,
                   expected=expected)
    assert line.endswith("allowed: " + line.rsplit("allowed: ", 1)[1]) and "(or a prefix)" in line


def test_mtl_with_a_method_no_ticket_has(case):
    root = tickets_root(case / "results")
    refused(case, "raytickets", "mtl", "--tickets", root, "--tasks", "sst2,rte", "--out", case / "mtl", "--method",
            "zzz", expected="(sst2's tickets are of method magnitude, not 'zzz')")


# -------------------------------------------------------------------------------------------- not one line


@pytest.mark.parametrize("entry, args, expected", [
    ("raytickets", ["finetune", "--epochs", "abc", "--out", "x"], "raytickets finetune: error: argument --epochs: "
                                                                  "invalid float value: 'abc'"),
    ("raytickets", ["imp", "--out"], "raytickets imp: error: argument --out: expected one argument"),
    ("raytickets", ["nope"], "raytickets: error: argument command: invalid choice: 'nope'"),
    ("raytickets", [], "raytickets: error: the following arguments are required: command"),
    ("raytickets", ["export", "root", "--out", "x"], "raytickets export: error: one of the arguments --best "
                                                     "--sparsity --mask-id is required"),
    ("raytickets", ["export", "root", "--best", "--format", "zip", "--out", "x"], "raytickets export: error: argument "
                                                                                  "--format: invalid choice: 'zip'"),
    ("raytickets", ["analyze"], "raytickets analyze: error: the following arguments are required: results_dir"),
    ("raytickets", ["report", "a", "b"], "raytickets: error: unrecognized arguments: b"),
    ("raytickets", ["mtl", "--alpha", "x"], "raytickets mtl: error: argument --alpha: invalid float value: 'x'"),
    ("raytickets", ["sweep", "--bogus"], "raytickets sweep: error: unrecognized arguments: --bogus"),
    ("sweep", ["--dashboard-port", "x"], "python -m raytickets.sweep: error: argument --dashboard-port: invalid int"),
    ("mtl", ["--workers", "x"], "python -m raytickets.mtl: error: argument --workers: invalid int value: 'x'"),
])
def test_a_usage_error_is_one_line_naming_the_command(case, entry, args, expected):
    line = refused(case, entry, *args, expected=expected)
    assert line.startswith(expected) and line.endswith("--help)"), line
