"""The command-line reference (docs/cli.md), rendered from the parser itself so it cannot drift."""

from __future__ import annotations

import os

WIDTH = 100


def render() -> str:
    """Markdown with the top-level help and every subcommand's help, as `elmo-dist ... --help` prints."""
    from elmo_dist.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)  # argparse wraps to the terminal width
    try:
        parser = build_parser()
        action = next(a for a in parser._actions if a.dest == "command")
        parts = ["# Command-line reference", "",
                 "Rendered from the parser (`python -m elmo_dist.cli.reference > docs/cli.md`); "
                 "`tests/test_cli.py` checks it is current.", "", "```", parser.format_help().rstrip(), "```"]
        for name, sub in action.choices.items():
            parts += ["", f"## elmo-dist {name}", "", "```", sub.format_help().rstrip(), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


if __name__ == "__main__":
    print(render(), end="")
