#!/usr/bin/env bash
# Ultralytics' own tests, run with mod_vision imported: importing and using mod_vision must not change stock Ultralytics.
#
# The tests come from the sdist of the installed Ultralytics version (fetched once from PyPI into a cache folder; only
# its tests/ folder is kept, so the installed package is the one tested). tools/ultralytics_suite_plugin.py imports
# mod_vision and runs a routed model before they start. The tests run are the offline-capable subset named in
# tools/ultralytics_suite_tests.txt (model building from YAML, the cfg checks, engine set-up, Results, ops, datasets):
# each passes offline without mod_vision. Exit status: pytest's (non-zero if any of them fails).
#
# Usage: tools/ultralytics_suite.sh [extra pytest args]   (PYTHON=path/to/python to use another interpreter)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
version="$("$py" -c 'import ultralytics; print(ultralytics.__version__)')"
cache="${ULTRALYTICS_SUITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mod_vision/ultralytics-$version}"

if [ ! -f "$cache/tests/__init__.py" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if ! "$py" -m pip download -q --no-deps --no-binary :all: "ultralytics==$version" -d "$tmp"; then
    echo "ultralytics_suite: cannot fetch the ultralytics==$version sdist from PyPI (it holds the tests this check runs)" >&2
    exit 1
  fi
  tar xzf "$tmp/ultralytics-$version.tar.gz" -C "$tmp"
  mkdir -p "$cache"
  rm -rf "$cache/tests"
  cp -r "$tmp/ultralytics-$version/tests" "$cache/tests"
  printf '[pytest]\n' > "$cache/pytest.ini"  # its own rootdir: neither mod_vision's nor Ultralytics' pytest settings
fi

mapfile -t tests < <(grep -v '^\s*\(#\|$\)' "$repo/tools/ultralytics_suite_tests.txt")
cd "$cache"
YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false PYTHONPATH="$repo/tools:$repo${PYTHONPATH:+:$PYTHONPATH}" \
  "$py" -m pytest -q -p no:cacheprovider -p ultralytics_suite_plugin --timeout 300 "$@" "${tests[@]}"
