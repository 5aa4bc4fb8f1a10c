#!/usr/bin/env bash
# Fresh-machine check: clone this repository into a temporary folder and run the README's two commands there,
# verbatim, as a new user would: the pip that `python3 -m venv` gives, an empty pip cache, an empty temp
# folder. Reports each step's exit code and time, the virtual environment's disk size and the temp folder's
# peak and final size (pip unpacks candidates there).
#
# usage: scripts/fresh_setup_check.sh [--python PYTHON] [--demo-only] [--keep]
#   --python PYTHON  the interpreter that plays `python3` (default: python3), e.g. python3.13
#   --demo-only      run the first command (set up + assd demo) only
#   --keep           keep the clone (its path is printed); it is removed otherwise
# exit: 0 when every command run exited 0, else 1
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python=python3; demo_only=0; keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python="$2"; shift 2 ;;
        --demo-only) demo_only=1; shift ;;
        --keep) keep=1; shift ;;
        *) echo "error: unknown option $1 (see the usage at the top of $0)" >&2; exit 2 ;;
    esac
done
work="$(mktemp -d "${TMPDIR:-/tmp}/assd-fresh.XXXXXX")"
[ "$keep" -eq 1 ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/tmp" "$work/pip-cache"
ln -s "$(command -v "$python")" "$work/bin/python3"   # the README says python3: make it this interpreter
git clone -q "$repo" "$work/assd" || exit 1
if [ -d "$repo/../shared" ]; then   # as in CI, the real photos lie beside the checkout (tests skip without them)
    ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
fi
export PATH="$work/bin:$PATH" TMPDIR="$work/tmp" PIP_CACHE_DIR="$work/pip-cache"
echo "fresh clone: $work/assd ($(git -C "$work/assd" log -1 --format='%h %s' | cut -c1-70))"
echo "python3: $(python3 --version 2>&1); machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB"

peak_file="$work/peak_tmp_mb"; echo 0 > "$peak_file"
( while sleep 2; do                              # sample the temp folder's size while the commands run
      size=$(du -sm "$TMPDIR" 2>/dev/null | cut -f1)
      [ "${size:-0}" -gt "$(cat "$peak_file")" ] && echo "$size" > "$peak_file"
  done ) &
sampler=$!

status=0
cd "$work/assd"
for name in demo tests; do
    [ "$name" = tests ] && [ "$demo_only" -eq 1 ] && break
    start=$(date +%s)
    echo 0 > "$peak_file"                        # the temp folder's peak per command
    scripts/run_readme_command.sh "$name" 2>&1 | tee "$work/$name.log" | grep -E '^(==|--) '
    code=${PIPESTATUS[0]}
    echo "README command '$name': exit $code in $(( $(date +%s) - start )) s"
    tail -n 3 "$work/$name.log" | sed 's/^/    | /'
    echo "    venv on disk after '$name': $(du -sh .venv 2>/dev/null | cut -f1); temp folder peak during it" \
         "$(cat "$peak_file") MB (the tests' own temporary files count there too)"
    [ "$code" -eq 0 ] || status=1
    [ "$status" -eq 0 ] || break
done
kill "$sampler" 2>/dev/null
echo "pip cache: $(du -sh "$PIP_CACHE_DIR" | cut -f1)"
echo "temp folder left after the commands: $(du -sm "$TMPDIR" | cut -f1) MB"
[ "$keep" -eq 1 ] && echo "kept: $work"
exit "$status"
