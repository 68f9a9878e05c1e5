#!/usr/bin/env bash
# Fill a folder with the wheels an image that already has torch and torchvision lacks to run this project
# (and its tests) offline: `scripts/gpu_acceptance.sh --wheels DIR` installs them with
# `pip install --no-index --find-links DIR -r DIR/requirements.txt`.
#
#   scripts/download_wheels.sh DIR [--python-version 3.12] [--platform manylinux_2_28_x86_64] [--have FILE]
#
# --have FILE: packages the target image has already (`pip freeze` there, or one name a line): left out too, so
# the folder stays small. Their versions must satisfy this project's requirements; the offline install checks.
#
# Run it on a machine that reaches a package index and has this project installed (`pip install -e .`): what
# torch and torchvision bring is read from their installed metadata, so it is left out. Packages published as
# source only (antlr4-python3-runtime 4.9.3, which omegaconf pins) are built here into pure-Python wheels.
set -euo pipefail

# usage PROBLEM [FIX]: one error line, exit 2
usage() { echo "error: $1. Fix: ${2:-scripts/download_wheels.sh DIR [--python-version X.Y] [--platform TAG] [--have FILE]}." >&2; exit 2; }
DIR="" PYV="3.12" PLATFORM="manylinux_2_28_x86_64" HAVE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python-version) [[ $# -ge 2 ]] || usage "--python-version needs a value"; PYV="$2"; shift 2 ;;
        --platform) [[ $# -ge 2 ]] || usage "--platform needs a value"; PLATFORM="$2"; shift 2 ;;
        --have) [[ $# -ge 2 ]] || usage "--have needs a value"; HAVE="$2"; shift 2
                [[ -f "$HAVE" ]] || usage "--have $HAVE is not a file (a pip freeze, or one name a line)" ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) usage "unknown option $1" ;;
        *) [[ -z "$DIR" ]] || usage "one DIR only (got $DIR and $1)"; DIR="$1"; shift ;;
    esac
done
[[ -n "$DIR" ]] || usage "no DIR given"
[[ "$PYV" =~ ^3\.[0-9]+$ ]] || usage "--python-version must look like 3.12, not '$PYV'"
if [[ -e "$DIR" ]] && { [[ ! -d "$DIR" ]] || [[ -n "$(ls -A "$DIR")" ]]; }; then
    usage "$DIR exists and is not an empty folder (old and new wheels mixed would install the wrong ones)" "pass a new folder"
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
"$PY" -m pip --version > /dev/null 2>&1 || usage "$PY has no pip" "set PYTHON to the Python this project is installed in"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
FINAL="$DIR"
DIR="$WORK/wheels"  # filled here, moved to DIR only when complete: a failure leaves no half-made folder
mkdir -p "$DIR"

# 1. The project's requirements without torch and torchvision, and the names torch and torchvision bring.
"$PY" "$REPO/scripts/requirements.py" --exclude-torch "$REPO/setup.cfg" > "$DIR/requirements.txt"
"$PY" "$REPO/scripts/requirements.py" --torch-closure "$PYV" > "$WORK/present.txt"
[[ -z "$HAVE" ]] || "$PY" "$REPO/scripts/requirements.py" --names "$HAVE" >> "$WORK/present.txt"

# 2. Source-only packages in the project's closure: a resolution for this interpreter says which (an sdist
#    URL), and each is built into a wheel here; only pure-Python ones can serve another interpreter.
"$PY" -m pip install --quiet --dry-run --ignore-installed --report "$WORK/host.json" -r "$DIR/requirements.txt"
"$PY" - "$WORK/host.json" > "$WORK/sdists.txt" <<'EOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    url = item["download_info"]["url"]
    if not url.endswith(".whl"):
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
EOF
while read -r spec; do
    [[ -n "$spec" ]] || continue
    if grep -qix "$(echo "${spec%%==*}" | tr '_.' '--')" "$WORK/present.txt"; then continue; fi
    echo "building a wheel of $spec (published as source only)"
    "$PY" -m pip wheel --quiet --no-deps --no-binary=:all: -w "$WORK/built" "$spec"
done < "$WORK/sdists.txt"
if compgen -G "$WORK/built/*.whl" > /dev/null; then
    for wheel in "$WORK/built"/*.whl; do
        [[ "$wheel" == *-none-any.whl ]] || { echo "error: $(basename "$wheel") is not pure Python, so it cannot be built here for Python $PYV" >&2; exit 1; }
        cp "$wheel" "$DIR/"
    done
fi

# 3. The whole closure as wheels for the target interpreter and platform; then drop what torch brings (and
#    what --have lists).
NODOT="${PYV/./}"
PLATFORMS=(--platform "$PLATFORM" --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download --quiet --dest "$DIR" --find-links "$DIR" --only-binary=:all: --python-version "$PYV" \
    --implementation cp --abi "cp$NODOT" --abi abi3 --abi none "${PLATFORMS[@]}" -r "$DIR/requirements.txt"
"$PY" "$REPO/scripts/requirements.py" --drop "$WORK/present.txt" "$DIR"

rm -f "$DIR"/*.tar.gz "$DIR"/*.zip  # sdists pip fetched while resolving; their wheels are built above
mkdir -p "$FINAL" && mv "$DIR"/* "$FINAL"/
DIR="$(cd "$FINAL" && pwd)"
echo "wheels for Python $PYV in $DIR: $(ls "$DIR"/*.whl | wc -l) files, $(du -sh "$DIR" | cut -f1)"
echo "install offline (next to torch and torchvision): pip install --no-index --find-links $DIR -r $DIR/requirements.txt"
