#!/usr/bin/env python3
"""Print the README's set-up commands, one per line, so that CI and the fresh-machine check run them verbatim.

The README's "Quick start" holds exactly two commands, each in a ```bash block right after an HTML marker:
``<!-- command: demo -->`` (set up, then run the main job) and ``<!-- command: tests -->`` (the tests).
Usage: ``python3 scripts/readme_commands.py [demo|tests]`` (no argument: both, demo first). Standard library
only: it runs before the project's virtual environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ("demo", "tests")
BLOCK = re.compile(r"<!-- command: (?P<name>[a-z]+) -->\s*```bash\n(?P<body>.*?)```", re.DOTALL)


def readme_commands(text: str) -> dict[str, str]:
    """{"demo": COMMAND, "tests": COMMAND} from the README's text; ValueError unless each marker holds one line."""
    found: dict[str, str] = {}
    for match in BLOCK.finditer(text):
        lines = [line for line in match.group("body").splitlines() if line.strip()]
        if len(lines) != 1 or match.group("name") in found:
            raise ValueError(f"README.md: the '{match.group('name')}' command block must hold one line, once")
        found[match.group("name")] = lines[0].strip()
    if sorted(found) != sorted(NAMES):
        raise ValueError(f"README.md: expected the command blocks {list(NAMES)}, found {sorted(found)}")
    return found


def main(argv: list[str]) -> int:
    try:
        commands = readme_commands(README.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in argv or NAMES:
        if name not in commands:
            print(f"error: no README command named {name!r} (choose from {', '.join(NAMES)})", file=sys.stderr)
            return 2
        print(commands[name])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
