#!/usr/bin/env bash
# The installs a user makes, checked end to end: a fresh virtual environment with `pip install .` (a regular,
# not editable, install from a clone) and one with `pip install git+file://<clone>`, each then trains a smoke
# run, prints a composed config and answers a typo from a folder outside the clone, through the console script.
#
#   scripts/check_fresh_install.sh [WORKDIR]      (default: a new temporary folder; kept, its path printed)
#
# Needs the package index (torch comes from it: about 1.5 min and 5.6 GB per environment). The clone is made
# from this checkout's HEAD, so commit first. Exit 0 when both pass; otherwise the failing command's status
# (its output shows why).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/alexnet-install.XXXXXX)}"
PY="${PYTHON:-python3}"
mkdir -p "$WORK"
echo "work dir: $WORK ($("$PY" --version), commit $(git -C "$REPO" rev-parse --short HEAD))"
rm -rf "$WORK/clone" && git clone -q "$REPO" "$WORK/clone"

check() {  # NAME PIP-ARGUMENT...: a fresh venv, the install, then the commands from another folder
    local name=$1; shift
    local venv="$WORK/$name" elsewhere="$WORK/$name-cwd"
    rm -rf "$venv" "$elsewhere" && mkdir -p "$elsewhere"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$@"
    cd "$elsewhere"
    local where; where="$("$venv/bin/python" -c 'import alexnet; print(alexnet.__file__)')"
    echo "[$name] alexnet from $where"
    [[ $where == "$venv"/* ]] || { echo "[$name] alexnet is not the installed copy"; return 1; }
    "$venv/bin/alexnet-train" debug=smoke data=synthetic model=alexnet_cifar model.width=0.25 wandb.mode=offline \
        hydra.run.dir=smoke
    test -f smoke/metrics.jsonl -a -f smoke/.hydra/config.yaml
    "$venv/bin/alexnet-train" --cfg job model=alexnet_cifar | grep -q "arch: alexnet_cifar"
    set +e
    "$venv/bin/alexnet-train" modle.dropout=0.5 2> typo.err; code=$?
    set -e
    [[ $code == 2 ]] && grep -q "model.dropout" typo.err || { cat typo.err; echo "[$name] the typo was not refused with exit 2"; return 1; }
    cd - > /dev/null
    echo "[$name] passed"
}

check pip-install "$WORK/clone"
check pip-install-git "git+file://$WORK/clone"
echo "both passed"
