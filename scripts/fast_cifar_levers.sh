#!/usr/bin/env bash
# Issue 16's proxy on one GPU: `+experiment=fast_cifar` for its full 40 epochs once per line of a variants file
# (a name, then overrides), several at a time on the one GPU, then one comparison report over all of them. The
# runs share the GPU, so their times say nothing: only their accuracies count (docs/gpu/2026-11-26-h100/NOTES.md).
#
#   bash scripts/fast_cifar_levers.sh --variants FILE --data DIR --out DIR [--parallel 5] [--timeout 200]
#
# --data: the JPEG CIFAR-10 copy unpacked (DIR/train, DIR/test). Each run's dir is OUT/runs/NAME (its
# metrics.jsonl and config; checkpoints are deleted, as the device tool brings back few files); OUT/report/ holds
# the report. A run past --timeout seconds is stopped (its metrics so far are kept; the exit code is then 1).
# PYTHON=... picks python; DEVICE=cpu tries the script on a CPU.
set -uo pipefail
set -f  # the overrides are split into words below, never globbed (key=[a,b])
PY="${PYTHON:-python3}"
parallel=5 timeout=200 variants="" data="" out=""
usage() { echo "error: $1. Fix: bash $0 --variants FILE --data DIR --out DIR [--parallel N] [--timeout S]" >&2; exit 2; }
while (($#)); do
    [[ "$1" == --* && $# -lt 2 ]] && usage "$1 needs a value"
    case "$1" in
        --variants) variants="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --parallel) parallel="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        *) usage "unknown argument $1" ;;
    esac
done
[[ -f "$variants" && -d "$data/train" && -n "$out" ]] || usage "--variants FILE, --data DIR (with train/) and --out DIR are needed"
mkdir -p "$out/runs" "$out/logs"
: > "$out/logs/failed"

one() {  # NAME OVERRIDES...
    local name="$1"; shift
    timeout -k 20 "$timeout" "$PY" -m alexnet.run +experiment=fast_cifar seed=0 data.root="$data" trainer.device="${DEVICE:-cuda}" \
        wandb.mode=disabled data.cache_dir="/tmp/levers-cache-$name" hydra.run.dir="$out/runs/$name" "$@" \
        > "$out/logs/$name.log" 2>&1
    local code=$?
    echo "$name: exit $code ($*)"
    ((code == 0)) || echo "$name" >> "$out/logs/failed"
    rm -rf "$out/runs/$name/checkpoints"
}

running=0
while read -r name overrides || [[ -n "$name" ]]; do  # a last line without a newline counts too
    [[ -z "$name" || "$name" == \#* ]] && continue
    # shellcheck disable=SC2086  # the overrides are words
    one "$name" $overrides &
    running=$((running + 1))
    if ((running >= parallel)); then wait -n; running=$((running - 1)); fi
done < "$variants"
wait
"$PY" -m alexnet.report "$out/runs" --out "$out/report" --title "fast_cifar levers (issue 16 proxy)" \
    --label "CIFAR-10, JPEG q75 copy" > "$out/logs/report.log" 2>&1 || { echo "report failed: see $out/logs/report.log"; exit 1; }
if [[ -s "$out/logs/failed" ]]; then  # stopped by --timeout (exit 124) or failed: the report leaves them out
    echo "not finished: $(tr '\n' ' ' < "$out/logs/failed")(see $out/logs/)"; exit 1
fi
