#!/usr/bin/env bash
# Side-by-side training-step throughput: this project's `resnet_step` bench
# against the PyTorch peer script, run alternately ROUNDS times in one
# sitting; prints every run and the ratio of the median img/s.
#
#   crates/lt-models/benches/compare_with_torch.sh [ROUNDS] [-- extra resnet_step args]
#
# Environment:
#   PEER_PYTHON   python with torch (default: .venv-peer/bin/python, see
#                 shared/bench/README.md for the install)
#   PEER_SCRIPT   the peer script (default: ../shared/bench/torch_resnet_step.py)
#   MODEL BATCH THREADS   (default resnet32 128 2)
#   RT=1          run both under `chrt -f 10` (root only): on a shared machine
#                 this keeps other processes from stealing the cores, which
#                 otherwise moves PyTorch's barrier-synchronised threads far
#                 more than ours.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROUNDS=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
PEER_PYTHON=${PEER_PYTHON:-.venv-peer/bin/python}
PEER_SCRIPT=${PEER_SCRIPT:-../shared/bench/torch_resnet_step.py}
[ -f "$PEER_SCRIPT" ] || PEER_SCRIPT=/work/shared/bench/torch_resnet_step.py
MODEL=${MODEL:-resnet32}
BATCH=${BATCH:-128}
THREADS=${THREADS:-2}
PREFIX=()
[ "${RT:-0}" = 1 ] && PREFIX=(chrt -f 10)

BIN=$(cargo bench -p lt-models --bench resnet_step --no-run --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "resnet_step" and m.get("executable"):
        print(m["executable"])')
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)  bench: $BIN" >&2
OUT=$(mktemp)
for _ in $(seq "$ROUNDS"); do
    "${PREFIX[@]}" "$PEER_PYTHON" "$PEER_SCRIPT" --model "$MODEL" --batch "$BATCH" --threads "$THREADS" 2>/dev/null |
        sed 's/^/peer /' | tee -a "$OUT"
    "${PREFIX[@]}" "$BIN" --model "$MODEL" --batch "$BATCH" --threads "$THREADS" --steps 10 --warmup 3 "$@" |
        sed 's/^/ours /' | tee -a "$OUT"
done
python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = {"peer": [], "ours": []}
for line in open(sys.argv[1]):
    who, js = line.split(" ", 1)
    runs[who].append(json.loads(js)["img_per_s_median"])
peer, ours = statistics.median(runs["peer"]), statistics.median(runs["ours"])
print(f"median img/s: ours {ours:.1f}, peer {peer:.1f}, ratio {ours / peer:.2f}")
EOF
rm -f "$OUT"
