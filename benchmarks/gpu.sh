#!/usr/bin/env bash
# Everything fsd claims about GPUs, measured in one run of under 8 minutes, written to one report.
#
#   bash benchmarks/gpu.sh                     # on a machine with a CUDA GPU
#   bash benchmarks/gpu.sh --smoke             # tiny sizes on the CPU: checks that the script works
#   bash benchmarks/gpu.sh --report FILE       # where the report goes
#
# The report (Markdown) goes to FILE, by default $OUT/gpu-report.md when $OUT is set (the device
# machine's return folder), else benchmarks/gpu-report.md; each section's progress and errors go to
# FILE with .log in place of .md. Each section of benchmarks/bench_gpu.py runs in its own process under
# its own time limit, so one that hangs or fails is marked in the report and the others still run.
# Exit status: 0 when every section ran, 1 when one failed or ran out of time, 2 for bad arguments or
# no GPU (without --smoke).
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
SMOKE=0
if [ -n "${OUT:-}" ]; then REPORT="$OUT/gpu-report.md"; else REPORT="$HERE/gpu-report.md"; fi
WORKDIR="${TMPDIR:-/tmp}/fsd-gpu-bench"

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --report) [ $# -ge 2 ] || { echo "gpu.sh: --report needs a file name" >&2; exit 2; }
                  REPORT="$2"; shift ;;
        --workdir) [ $# -ge 2 ] || { echo "gpu.sh: --workdir needs a folder" >&2; exit 2; }
                   WORKDIR="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu.sh: unknown argument '$1' (use --smoke, --report FILE, --workdir DIR)" >&2; exit 2 ;;
    esac
    shift
done

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [ "$SMOKE" = 0 ]; then
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "gpu.sh: no CUDA GPU is visible to $PYTHON (torch.cuda.is_available() is False, or torch is" \
             "missing); run it on a GPU machine, or with --smoke to check the script on the CPU" >&2
        exit 2
    fi
    # fsd is read from this checkout; what it needs must be installed beside torch.
    if ! missing=$("$PYTHON" -c 'import fsd, torchvision, numpy, scipy, PIL, click, tqdm' 2>&1); then
        echo "gpu.sh: $PYTHON cannot import what fsd needs: ${missing##*$'\n'}" >&2
        exit 2
    fi
    DEVICE_ARGS=(--device cuda)
    # Seconds per section: 400 s, plus at most 10 s per section to stop one that overruns (460 s), under
    # the 8 minutes promised; each includes starting Python, torch and CUDA, and building the model.
    LIMITS=(machine:30 throughput:100 invariance:80 determinism:50 decode:80 memory:60)
else
    DEVICE_ARGS=(--smoke)
    LIMITS=(machine:60 throughput:120 invariance:150 determinism:90 decode:120 memory:90)
fi

mkdir -p "$(dirname "$REPORT")" "$WORKDIR" || exit 2
LOG="${REPORT%.md}.log"
[ "$LOG" = "$REPORT" ] && LOG="$REPORT.log"
START=$(date +%s)
FAILED=()

{
    echo "# fsd GPU check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | sed 's/^/- nvidia-smi: /'
    fi
    [ "$SMOKE" = 1 ] && echo "- mode: --smoke (tiny sizes on the CPU: these figures check the script, nothing else)"
    echo
} > "$REPORT"
: > "$LOG"

for entry in "${LIMITS[@]}"; do
    name="${entry%%:*}"
    limit="${entry##*:}"
    echo "gpu.sh: $name (limit ${limit} s)" >&2
    echo "== $name" >> "$LOG"
    section_start=$(date +%s)
    timeout --kill-after=10 "$limit" "$PYTHON" "$HERE/bench_gpu.py" --section "$name" "${DEVICE_ARGS[@]}" \
        --workdir "$WORKDIR" >> "$REPORT" 2>> "$LOG"
    status=$?
    seconds=$(( $(date +%s) - section_start ))
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        FAILED+=("$name")
        printf '\n**FAILED: section %s ran out of its %s s limit** (see %s)\n\n' "$name" "$limit" "$(basename "$LOG")" >> "$REPORT"
    elif [ "$status" -ne 0 ]; then
        FAILED+=("$name")
        printf '\n**FAILED: section %s exited with status %s after %s s** (see %s)\n\n' "$name" "$status" "$seconds" \
            "$(basename "$LOG")" >> "$REPORT"
    fi
done

TOTAL=$(( $(date +%s) - START ))
if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "Total: ${TOTAL} s, every section ran." >> "$REPORT"
else
    echo "Total: ${TOTAL} s; failed: ${FAILED[*]}." >> "$REPORT"
fi
echo "gpu.sh: report in $REPORT (${TOTAL} s)" >&2
[ "${#FAILED[@]}" -eq 0 ]
