#!/usr/bin/env bash
# Side by side: this project's `resnet_step` bench against the PyTorch peer
# (`torch_peer.py`), run alternately ROUNDS times per row in one sitting.
# Every run goes to stderr as a JSON line; stdout gets one markdown table
# (ours and the peer's median img/s, their ratio, peak memory of each) headed
# by the machine (CPU model, threads) and the load average before and after.
#
#   crates/lt-models/benches/compare_with_torch.sh [ROUNDS] [-- extra resnet_step args]
#   TABLE=1 crates/lt-models/benches/compare_with_torch.sh [ROUNDS]   # every row below
#
# Environment:
#   PEER_PYTHON   python with torch (default: .venv-peer/bin/python; install with
#                 python3 -m venv .venv-peer && .venv-peer/bin/pip install torch torchvision)
#   PEER_SCRIPT   the peer script (default: crates/lt-models/benches/torch_peer.py)
#   MODEL BATCH MODE   one row (default resnet32 128 train); MODE is train or infer
#   TABLE=1       the whole table instead: resnet32 b128 train; resnet50 and
#                 resnext50_32x4d b16 and b32 train; resnet10 b32 train;
#                 resnet50, resnext50_32x4d and resnet10 b64 infer
#   ROWS          the rows as "model:batch:mode ..." (overrides MODEL/BATCH/MODE/TABLE)
#   THREADS       threads of both (default 2)
#   BENCH_BIN     a resnet_step binary already built (default: build it with cargo)
#   STEPS WARMUP  timed and warm-up steps per run (default 10 and 3)
#   ISA=avx2      both sides on the instruction sets of an AVX2-only CPU: ours
#                 built without `avx512-gemm` and run with --max-isa avx2, the
#                 peer with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
#                 (ISA=avx512, the default, leaves both alone)
#   RT=1          run both under `chrt -f 10` (root only): on a shared machine
#                 this keeps other processes from stealing the cores, which
#                 otherwise moves PyTorch's barrier-synchronised threads far
#                 more than ours. It costs both sides: real-time tasks are
#                 throttled for 50 ms of every second (the kernel's
#                 sched_rt_runtime_us), so about every fourth ResNet-32 step
#                 stalls, and on a quiet machine both ran about a tenth
#                 faster without it (the README's performance section).
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROUNDS=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
PEER_PYTHON=${PEER_PYTHON:-.venv-peer/bin/python}
PEER_SCRIPT=${PEER_SCRIPT:-crates/lt-models/benches/torch_peer.py}
THREADS=${THREADS:-2}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
if [ -z "${ROWS:-}" ]; then
    if [ "${TABLE:-0}" = 1 ]; then
        ROWS="resnet32:128:train resnet50:16:train resnet50:32:train"
        ROWS+=" resnext50_32x4d:16:train resnext50_32x4d:32:train resnet10:32:train"
        ROWS+=" resnet50:64:infer resnext50_32x4d:64:infer resnet10:64:infer"
    else
        ROWS="${MODEL:-resnet32}:${BATCH:-128}:${MODE:-train}"
    fi
fi
PREFIX=()
[ "${RT:-0}" = 1 ] && PREFIX=(chrt -f 10)
ISA=${ISA:-avx512}
BUILD_FLAGS=()
OURS_FLAGS=()
PEER_ENV=()
case "$ISA" in
    avx512) ;;
    avx2)
        BUILD_FLAGS=(--no-default-features)
        OURS_FLAGS=(--max-isa avx2)
        PEER_ENV=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)
        ;;
    *) echo "compare_with_torch: ISA must be avx512 or avx2, got \"$ISA\"" >&2; exit 2 ;;
esac

BIN=${BENCH_BIN:-$(cargo bench -p lt-models "${BUILD_FLAGS[@]}" --bench resnet_step --no-run --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "resnet_step" and m.get("executable"):
        print(m["executable"])')}
[ -n "$BIN" ] || { echo "compare_with_torch: the resnet_step bench did not build" >&2; exit 1; }
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load: $LOAD0  bench: $BIN  peer: $PEER_PYTHON $PEER_SCRIPT" >&2
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for row in $ROWS; do
    IFS=: read -r model batch mode <<<"$row"
    for _ in $(seq "$ROUNDS"); do
        env "${PEER_ENV[@]}" "${PREFIX[@]}" "$PEER_PYTHON" "$PEER_SCRIPT" --model "$model" --batch "$batch" \
            --threads "$THREADS" --mode "$mode" --steps "$STEPS" --warmup "$WARMUP" 2>/dev/null |
            sed "s/^/peer $row /" | tee -a "$OUT" >&2
        "${PREFIX[@]}" "$BIN" --model "$model" --batch "$batch" --threads "$THREADS" \
            --mode "$mode" --steps "$STEPS" --warmup "$WARMUP" "${OURS_FLAGS[@]}" "$@" |
            sed "s/^/ours $row /" | tee -a "$OUT" >&2
    done
done
python3 - "$OUT" "$ROWS" "$THREADS" "$ROUNDS" "$LOAD0" "$ISA" <<'EOF'
import json, statistics, sys
out, rows, threads, rounds, load0, isa = sys.argv[1:]
runs = {}
for line in open(out):
    who, row, js = line.split(" ", 2)
    runs.setdefault((who, row), []).append(json.loads(js))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
load1 = " ".join(open("/proc/loadavg").read().split()[:3])
peer_fw = next((r[0].get("framework", "torch") for (w, _), r in runs.items() if w == "peer"), "torch")
def ran(who):
    # The instruction sets the runs report (ours: the kernels'; the peer: ATen's).
    return "/".join(sorted({r.get("isa", "?") for (w, _), rs in runs.items() if w == who for r in rs})) or "?"
cap = "" if isa == "avx512" else f" (capped: ISA={isa})"
print(f"{cpu}, {threads} threads, instruction sets ours {ran('ours')}, peer {ran('peer')}{cap}; ours vs {peer_fw}; median of {rounds} alternating run(s) per row; "
      f"load average {load0} before, {load1} after")
print()
print("| backbone | batch | mode | ours img/s | peer img/s | ratio | peak memory ours / peer (MB) |")
print("|---|---|---|---|---|---|---|")
for row in rows.split():
    model, batch, mode = row.split(":")
    ours, peer = runs.get(("ours", row), []), runs.get(("peer", row), [])
    def med(rs):
        return statistics.median(r["img_per_s_median"] for r in rs) if rs else float("nan")
    def peak(rs):
        return f'{max(r["peak_rss_mb"] for r in rs):.0f}' if rs and "peak_rss_mb" in rs[0] else "-"
    o, p = med(ours), med(peer)
    ratio = o / p if p == p and p > 0 else float("nan")
    print(f"| {model} | {batch} | {mode} | {o:.1f} | {p:.1f} | {ratio:.2f} | {peak(ours)} / {peak(peer)} |")
EOF
