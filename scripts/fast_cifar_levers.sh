#!/usr/bin/env bash
# Issue 16's proxy on one GPU: `+experiment=fast_cifar` for its full 40 epochs once per line of a variants file
# (a name, then overrides), several at a time on the one GPU, then one comparison report over all of them. The
# runs share the GPU, so their times say nothing: only their accuracies count (docs/gpu/2026-11-26-h100/NOTES.md).
#
#   bash scripts/fast_cifar_levers.sh --variants FILE --data DIR --out DIR [--parallel 5] [--timeout 200]
#
# --data: the JPEG CIFAR-10 copy unpacked (DIR/train, DIR/test). Each run's dir is OUT/runs/NAME (its
# metrics.jsonl and config; checkpoints are deleted, as the device tool brings back few files); OUT/report/ holds
# the report. A run past --timeout seconds is stopped (its metrics so far are kept). PYTHON=... picks python;
# DEVICE=cpu tries the script on a CPU.
set -uo pipefail
PY="${PYTHON:-python3}"
parallel=5 timeout=200 variants="" data="" out=""
while (($#)); do
    case "$1" in
        --variants) variants="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --parallel) parallel="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        *) echo "error: unknown argument $1. Fix: see the usage at the top of $0." >&2; exit 2 ;;
    esac
done
[[ -f "$variants" && -d "$data/train" && -n "$out" ]] || {
    echo "error: --variants FILE, --data DIR (with train/ and test/) and --out DIR are needed. Fix: see $0." >&2; exit 2; }
mkdir -p "$out/runs" "$out/logs"

one() {  # NAME OVERRIDES...
    local name="$1"; shift
    timeout "$timeout" "$PY" -m alexnet.run +experiment=fast_cifar seed=0 data.root="$data" trainer.device="${DEVICE:-cuda}" \
        wandb.mode=disabled data.cache_dir="/tmp/levers-cache-$name" hydra.run.dir="$out/runs/$name" "$@" \
        > "$out/logs/$name.log" 2>&1
    echo "$name: exit $? ($*)"
    rm -rf "$out/runs/$name/checkpoints"
}

running=0
while read -r name overrides; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    # shellcheck disable=SC2086  # the overrides are words
    one "$name" $overrides &
    running=$((running + 1))
    if ((running >= parallel)); then wait -n; running=$((running - 1)); fi
done < "$variants"
wait
"$PY" -m alexnet.report "$out/runs" --out "$out/report" --title "fast_cifar levers (issue 16 proxy)" \
    > "$out/logs/report.log" 2>&1 || echo "report failed: see $out/logs/report.log"
