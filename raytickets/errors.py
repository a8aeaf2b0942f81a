"""The error types raytickets raises for bad input; the CLI prints them as one line and exits 2."""

import argparse
import sys


class RayticketsError(Exception):
    """Base class: a problem with what the user asked for, reported before any work starts."""


class ConfigError(RayticketsError, ValueError):
    """A config field has a bad value; the message names the field, the value and what is allowed."""


class DataError(RayticketsError, ValueError):
    """Input data is malformed; the message names the file and the line."""


class MaskError(RayticketsError, ValueError):
    """A mask does not fit a model (missing name, wrong shape) or is not a 0/1 mask."""


class ResultsError(RayticketsError, ValueError):
    """A results directory or table is missing, truncated or of an unknown schema."""


def one_line(command, *args) -> int:
    """Run a command's handler: its exit code, or 2 with bad input's one-line error on stderr (no traceback)."""
    try:
        return command(*args)
    except RayticketsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, `PROG: error: MESSAGE (see PROG --help)`, exit code 2:
    argparse's own prints the usage block first (5-7 lines), which buries the error. Subparsers inherit it
    (`add_subparsers` makes its parsers of the parent's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelp)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        text = " ".join(str(message).splitlines())  # a value with a newline in it must not break the one line
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


class DefaultsHelp(argparse.HelpFormatter):
    """Help that shows each option's default where it has one (argparse's ArgumentDefaultsHelpFormatter also prints
    "(default: None)" on every option without one, and on the positional overrides)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text or action.default in (None, False, argparse.SUPPRESS, []):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
