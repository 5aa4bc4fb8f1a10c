#!/usr/bin/env bash
# Refresh constraints.txt, the tested set of every package `pip install -e '.[dev]'` brings in, for every
# supported Python (3.10-3.13) and platform at once: `uv pip compile --universal` writes one pin per
# package, with environment markers where versions differ by Python or platform. The README's commands
# install with `-c constraints.txt`, so any pip (23.x from `python3 -m venv` included) takes one path
# through the resolver instead of backtracking through old releases.
#
# usage: scripts/refresh_constraints.sh        then run the tests (README) and commit constraints.txt
# uv comes from the package registry into a temporary virtual environment and is removed afterwards.
# Constraint files named in pip's own configuration (`pip config list`: global.constraint) are honoured,
# so the lock never pins a release this machine's pip would refuse.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d "${TMPDIR:-/tmp}/assd-constraints.XXXXXX")"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q uv
machine_caps=()
while IFS= read -r file; do
    [ -f "$file" ] && machine_caps+=(--constraint "$file")
done < <(python3 -m pip config list 2>/dev/null | sed -n "s/^global\.constraint='\(.*\)'$/\1/p" | tr ' ' '\n')
{
    echo "# The tested set: every package of 'pip install -e .[dev]' pinned, for Python 3.10-3.13 (markers)."
    echo "# Used by the README's commands: pip install -c constraints.txt ... (works with pip 23.x and newer)."
    echo "# Refresh: scripts/refresh_constraints.sh ($(date -u +%Y-%m-%d)), then run the tests and commit."
    "$work/venv/bin/uv" pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
        --no-header --no-annotate --quiet "${machine_caps[@]}"
} > "$work/constraints.txt"
mv "$work/constraints.txt" constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
