#!/usr/bin/env bash
# The stated dependency floors, checked: every `name>=X` of setup.cfg's install_requires installed as `name==X`
# together in a fresh virtual environment (the test tools at their newest), then the test suite on a clone.
#
#   scripts/check_floors.sh [WORKDIR] [PYTEST ARGS...]     (default: a new temporary folder; kept)
#
# Needs the package index (torch's floor comes from it: about 2 min). The clone is of this checkout's HEAD, so
# commit first. Exit status: pytest's.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [[ $# -gt 0 && $1 != -* ]]; then WORK=$1; shift; else WORK=$(mktemp -d /tmp/alexnet-floors.XXXXXX); fi
PY="${PYTHON:-python3}"
mkdir -p "$WORK" && rm -rf "$WORK/clone" "$WORK/venv"
git clone -q "$REPO" "$WORK/clone"
"$PY" -m venv "$WORK/venv"
pins=$("$PY" - "$REPO/setup.cfg" <<'PYTHON'
import configparser, re, sys
parser = configparser.ConfigParser()
parser.read(sys.argv[1])
for line in parser["options"]["install_requires"].splitlines():
    if m := re.fullmatch(r"\s*([A-Za-z0-9_.-]+)>=([^,\s]+).*", line):
        print(f"{m[1]}=={m[2]}")
PYTHON
)
echo "floors: $(echo $pins)"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip "setuptools>=70.1"
"$WORK/venv/bin/python" -m pip install -q $pins "pytest>=8" pytest-timeout pytest-xdist "hypothesis>=6"
"$WORK/venv/bin/python" -m pip install -q --no-deps -e "$WORK/clone"
"$WORK/venv/bin/python" -m pip freeze > "$WORK/freeze.txt"
cd "$WORK/clone"
exec "$WORK/venv/bin/python" -m pytest "$@"
