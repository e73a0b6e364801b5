"""The Typer application, its one error handler and its deprecated spellings.

Exit codes (echodeploy.errors): 0 all rows ok; 1 the run finished but some rows have errors (see
their status); 2 the run failed (bad arguments, missing model, unreachable server); 130 interrupted.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from typer.core import TyperCommand

from echodeploy.errors import EXIT_FAILED, EchodeployError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Serve echocardiography models (CMR-from-echo, M-mode) on ONNX Runtime or Triton.")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)


def fail(message: str, code: int = EXIT_FAILED):
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def handles_errors(command: Callable) -> Callable:
    """Report an EchodeployError as one red line on stderr and exit 2 (no traceback)."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EchodeployError as exc:
            fail(str(exc))

    return run


def renamed(spellings: dict[str, str]) -> type[TyperCommand]:
    """A command class that still accepts old option spellings (old -> new) for one release, with a warning."""
    class Renamed(TyperCommand):
        def parse_args(self, ctx, args: list[str]) -> list[str]:
            return super().parse_args(ctx, [_respell(arg, spellings) for arg in args])

    return Renamed


def _respell(arg: str, spellings: dict[str, str]) -> str:
    name, sep, value = arg.partition("=")
    if name not in spellings:
        return arg
    typer.secho(f"warning: {name} is deprecated and will be removed in the next release: use {spellings[name]}",
                fg="yellow", err=True)
    return spellings[name] + sep + value


def command(name: str | None = None, deprecated: dict[str, str] | None = None, group: typer.Typer = app):
    """Register a command on `group`, its EchodeployErrors handled, `deprecated` spellings (old -> new) accepted."""
    def register(function: Callable) -> Callable:
        group.command(name, cls=renamed(deprecated or {}))(handles_errors(function))
        return function

    return register
