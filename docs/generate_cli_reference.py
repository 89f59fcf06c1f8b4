"""Regenerate docs/cli.md from the CLI's own help: ``python docs/generate_cli_reference.py``."""

from __future__ import annotations

import os
from pathlib import Path

COMMANDS = ("info", "phantom", "prepare", "train", "convert", "evaluate", "demo")
DOC = Path(__file__).resolve().parent / "cli.md"


def render() -> str:
    """The reference page: every command's ``--help`` at a fixed width, without colour."""
    os.environ.update(COLUMNS="100", TERM="dumb", NO_COLOR="1")
    from typer.testing import CliRunner

    from medtrans.cli import app

    parts = ["# CLI reference\n\nGenerated from `medtrans <command> --help` by `python docs/generate_cli_reference.py`"
             " (a test keeps it in sync).\n"]
    for name in COMMANDS:
        result = CliRunner().invoke(app, [name, "--help"], prog_name="medtrans", terminal_width=100)
        text = "\n".join(line.rstrip() for line in result.output.splitlines()).strip("\n")
        parts.append(f"## `medtrans {name}`\n\n```\n{text}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC}")
