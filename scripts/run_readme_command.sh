#!/usr/bin/env bash
# Run one of the README's two commands verbatim (scripts/readme_commands.py reads it from README.md) in the
# current folder, step by step: the command is split at ' && ' and each step runs in order, stopping at the
# first failure exactly as `a && b && c` does, with its wall time printed.
# usage: scripts/run_readme_command.sh demo|tests        exit: the failing step's code, else 0
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command="$(python3 "$here/readme_commands.py" "$1")" || exit 2
echo "== README command ($1): $command"
while IFS= read -r step; do
    start=$(date +%s)
    echo "-- $step"
    bash -c "$step"
    status=$?
    echo "-- $(( $(date +%s) - start )) s, exit $status: $step"
    [ "$status" -eq 0 ] || exit "$status"
done < <(printf '%s\n' "$command" | sed 's/ && /\n/g')
