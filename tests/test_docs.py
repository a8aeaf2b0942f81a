"""The README and docs/ name only what exists: every `raytickets …` and `python -m …` command (subcommands and
flags resolved against the real argparse parsers), every repository path (configs/*.yaml, benchmarks, modules,
tests) and every relative link. docs/configuration.md is what docs/gen_config_reference.py makes from the config
dataclasses today; the citation files agree with the package and the model card."""

from __future__ import annotations

import argparse
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from raytickets import cli
from raytickets.export.card import CHEN2020, LIANG2021
from raytickets.sweep import cli as sweep_cli

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REQUIRED_PAGES = ("concepts", "configuration", "results", "cluster", "export", "mtl", "mlm", "presets", "reliability")
# Paths a page may name: files of these folders of the repository (a results tree's `<root>/…` is not one).
PATH = re.compile(r"(?<![\w./<>-])((?:configs|benchmarks|cluster|docs|tests|raytickets)/[\w./-]*\w\.(?:py|ya?ml|md|png|json))")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NOT_SHELL = {"python", "yaml", "bibtex", "json", "toml"}  # fenced code that is no command line
PLACEHOLDER = re.compile(r"^(<.*|[A-Z_]+|…|\.\.\.)$")  # `raytickets <command>`, `raytickets COMMAND`


def page_name(path: Path) -> str:
    return str(path.relative_to(REPO))


def code_texts(text: str) -> list[str]:
    """Command-line text of a page: each line of shell-like fenced blocks (continuations joined), then the inline
    code spans outside any fence (a span may wrap onto the next line)."""
    texts = []
    for lang, body in FENCE.findall(text):
        if lang not in NOT_SHELL:
            texts += body.replace("\\\n", " ").splitlines()
    for span in re.findall(r"`([^`]+)`", FENCE.sub("", text)):
        texts.append(" ".join(span.split()))
    return texts


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(program, arguments) of every `raytickets …` / `python -m MODULE …` in a page's code; arguments run to the
    end of the line or span, a `#` comment, `&&` or `;`."""
    found = []
    for code in code_texts(text):
        tokens = code.split()
        for i, tok in enumerate(tokens):
            if tok == "raytickets" and (i == 0 or tokens[i - 1] not in ("install", "-e")):
                program, rest = "raytickets", tokens[i + 1:]
            elif tok == "python" and tokens[i + 1:i + 2] == ["-m"] and len(tokens) > i + 2:
                program, rest = f"python -m {tokens[i + 2]}", tokens[i + 3:]
            else:
                continue
            args = []
            for t in rest:
                if t.startswith("#") or t in ("&&", ";") or t in ("raytickets", "python"):
                    break
                args.append(t)
            found.append((program, args))
    return found


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def flags(args: list[str]) -> list[str]:
    """The options among a command's words: `--x`, `[--x`, `(--x`, `--x=v`; a `-` alone or a number is none."""
    out = []
    for a in args:
        m = re.match(r"^[\[(]*(--?[A-Za-z][\w-]*)", a)
        if m:
            out.append(m.group(1))
    return out


def check_command(program: str, args: list[str]) -> str | None:
    """Why this command does not exist, or None."""
    if program == "raytickets":
        main = cli.parser()
        if not args or PLACEHOLDER.match(args[0]):
            return None
        if args[0].startswith("-"):
            unknown = [f for f in flags(args) if f not in options(main)]
            return f"raytickets has no option {unknown}" if unknown else None
        commands_ = subparsers(main)
        if args[0] not in commands_:
            return f"raytickets has no command {args[0]!r} (commands: {', '.join(commands_)})"
        parser = sweep_cli.parser() if args[0] == "sweep" else commands_[args[0]]
        unknown = [f for f in flags(args[1:]) if f not in options(parser)]
        return f"raytickets {args[0]} has no option(s) {unknown}" if unknown else None
    module = program.split()[-1]
    if importlib.util.find_spec(module) is None:
        return f"no module {module}"
    if module == "raytickets.sweep":
        unknown = [f for f in flags(args) if f not in options(sweep_cli.parser())]
        return f"python -m raytickets.sweep has no option(s) {unknown}" if unknown else None
    return None


def test_every_page_is_there_and_the_readme_is_short():
    for name in REQUIRED_PAGES:
        assert (REPO / "docs" / f"{name}.md").is_file(), name
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move detail into docs/ (the README is the front door)"


def test_every_command_the_pages_name_exists():
    seen, wrong = 0, []
    for page in PAGES:
        for program, args in commands(page.read_text()):
            seen += 1
            why = check_command(program, args)
            if why:
                wrong.append(f"{page_name(page)}: `{program} {' '.join(args)}`: {why}")
    assert not wrong, "\n".join(wrong)
    assert seen > 40  # the extraction itself works: the pages name dozens of commands


def test_the_checker_refuses_what_does_not_exist():
    """The rules above fail on a command, a flag, a module that is not there (else the test above proves nothing)."""
    page = ("```bash\npython -m raytickets.sweep --config configs/smoke.yaml --no-such-flag\n```\n"
            "Run `raytickets frobnicate RESULTS` or `raytickets export R --task sst2 --bestest --out D` or "
            "`python -m raytickets.nothing`; `raytickets report R --out D` is fine.")
    verdicts = [check_command(p, a) for p, a in commands(page)]
    assert [v is None for v in verdicts] == [False, False, False, False, True], verdicts
    assert "--no-such-flag" in verdicts[0] and "frobnicate" in verdicts[1] and "--bestest" in verdicts[2]


def test_every_path_and_link_the_pages_name_exists():
    missing = []
    for page in PAGES:
        text = page.read_text()
        for path in PATH.findall(text):
            if not (REPO / path).exists():
                missing.append(f"{page_name(page)}: {path}")
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            target = link.split("#")[0]
            if target and not re.match(r"^[a-z]+:", target) and not (page.parent / target).exists():
                missing.append(f"{page_name(page)}: link {link}")
    assert not missing, "\n".join(missing)
    named = {p for page in PAGES for p in PATH.findall(page.read_text()) if p.startswith("configs/")}
    shipped = {f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    assert shipped <= named, f"configs no page names: {sorted(shipped - named)}"


def test_the_configuration_reference_is_generated_from_todays_config():
    spec = importlib.util.spec_from_file_location("gen_config_reference", REPO / "docs" / "gen_config_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.render()
    assert (REPO / "docs" / "configuration.md").read_text() == text, \
        "docs/configuration.md is stale: run python docs/gen_config_reference.py"
    # Every key a sweep config can hold is in it, with the comment its dataclass gives it.
    from raytickets.config import SweepConfig

    for f in ("name", "storage_path"):
        assert f"| `{f}` |" in text
    for key in ("ticket.train.learning_rate", "ticket.prune.head_fraction", "search.transfer.levels", "resources.num_workers"):
        assert f"| `{key}` |" in text, key
    assert "| `ticket.prune.rate` | float | `0.1` |" in text and "(methods: activation, magnitude, movement, random, taylor)" in text
    assert "a directory in the original GLUE TSV layout" in text  # DataConfig.glue_dir's comment
    assert SweepConfig  # the page walks SweepConfig: a field added there and not regenerated fails above


# Dotted names in the pages that are not Python objects: Parquet metadata keys and the entry-point group.
NOT_PYTHON = {"raytickets.table", "raytickets.schema_version", "raytickets.sweep_modes"}


def resolves(name: str) -> bool:
    """`raytickets.a.b.c` is a module, or an attribute of the longest importable module prefix."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_python_name_the_pages_use_exists():
    """`raytickets.export.load_shrunk`, `raytickets.analysis.tables.md_cell`, …: an API a page names can be
    imported (a module moved or renamed leaves the pages pointing at nothing)."""
    names = {(page_name(page), m) for page in PAGES
             for m in re.findall(r"(?<![\w/.-])raytickets(?:\.[A-Za-z_]\w*)+", page.read_text())}
    assert len(names) > 10
    missing = sorted(f"{page}: {name}" for page, name in names if name not in NOT_PYTHON and not resolves(name))
    assert not missing, "\n".join(missing)
    assert not resolves("raytickets.export.no_such_function") and resolves("raytickets.export.load_shrunk")


@pytest.mark.parametrize("bibtex", [CHEN2020, LIANG2021], ids=["chen2020", "liang2021"])
def test_the_papers_are_cited_the_same_everywhere(bibtex):
    """docs/concepts.md holds the model card's BibTeX; CITATION.cff names both papers and raytickets' version and
    license as pyproject.toml does."""
    assert bibtex in (REPO / "docs" / "concepts.md").read_text()
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["version"] == project["version"]
    assert cff["license"] == project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text().splitlines()[0]
    title = re.search(r"title\s*=\s*\{(.*?)\},\n", bibtex, re.S).group(1).replace("{BERT}", "BERT")
    assert title in [r["title"] for r in cff["references"]]
