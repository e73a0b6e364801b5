"""The `echodeploy` command line: one module per group of commands, on one Typer app (app.py).

Importing a module registers its commands; the order here is the order `--help` lists them in.
"""
# ruff: noqa: I001, F401

from echodeploy.cli.app import app
from echodeploy.cli import export, runs, analysis, server, benchmarks

__all__ = ["app"]
