"""The ``medseg`` command: one subcommand per stage, each a thin call of the stage's function.

Commands live by topic in ``data``, ``model``, ``segment`` and ``runs``; importing them registers them on ``app``.
"""

from __future__ import annotations

import sys

import typer

from pipeline.cli import data, model, runs, segment  # noqa: F401  (registers the commands)
from pipeline.cli.app import app
from pipeline.errors import MedsegError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except MedsegError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
    except FileNotFoundError as err:  # a stage's input that an earlier stage did not write
        typer.secho(f"error: {err.filename}: no such file or folder", fg="red", err=True)
        sys.exit(2)
