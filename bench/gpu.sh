#!/usr/bin/env bash
# Every GPU benchmark and the gpu-marked tests in one go, under 8 minutes on one H100/H200, one JSON:
#
#   bench/gpu.sh             # on a CUDA machine: the write-up's sizes
#   bench/gpu.sh --smoke     # tiny sizes, CPU is fine: proves every piece runs (NOODLENEXT_BENCH_SMOKE=1 too)
#
# Pieces (each under its own time limit, so one slow piece cannot eat the others' time; each writes its
# JSON as it goes, so a piece stopped by its limit still reports what it measured):
#   train_eager, train_compiled  bench/train_throughput.py: convnext_base, 384 px, batch 16, Lightning vs a
#                                plain loop (the ratio is the Lightning overhead; target < 10 %)
#   scorecam                     bench/cam_speed.py: our ScoreCAM vs pytorch-grad-cam's, convnext_base 384 px
#   llm                          bench/llm_speed.py --gemma3-4b-shaped: random-init Gemma 3 4B from a locally
#                                built config (no download), ours vs eager generate, batch 1 and 8
#   loader                       bench/train_throughput.py --photo-size 4032x3024: decode + write-up stack per
#                                core, draft/cache/augment_on=gpu/decode=gpu vs a plain full decode
#   pytest_gpu                   pytest -m gpu
# Without CUDA (and without --smoke) every GPU piece is skipped and the JSON says so.
# Output: bench/results/gpu-<date>.json (or $NOODLENEXT_BENCH_OUT) and a table on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."

smoke="${NOODLENEXT_BENCH_SMOKE:-0}"
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=1 ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument $arg (use --smoke or nothing)" >&2; exit 2 ;;
    esac
done
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
stamp="$(date +%Y-%m-%d_%H%M%S)"
out="${NOODLENEXT_BENCH_OUT:-bench/results/gpu-$stamp.json}"
mkdir -p "$(dirname "$out")"
work="$(mktemp -d -t noodle-gpu-bench-XXXXXX)"
trap 'rm -rf "$work"' EXIT

cuda="$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
export TQDM_DISABLE=1 PYTHONWARNINGS="ignore::UserWarning" HF_HUB_OFFLINE=1 WANDB_MODE=offline
started=$(date +%s)

# skip NAME REASON: the piece is not run; the JSON gives the reason.
skip() { echo "$2" > "$work/$1.skipped"; echo "== $1: skipped ($2)" >&2; }

# piece NAME LIMIT_S COMMAND...: runs COMMAND under `timeout`, keeps its log, exit code and seconds.
piece() {
    local name="$1" limit="$2"
    shift 2
    if [ "$cuda" != 1 ] && [ "$smoke" != 1 ]; then
        skip "$name" "no CUDA GPU"
        return
    fi
    echo "== $name (limit ${limit}s): $*" >&2
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$work/$name.log" 2>&1
    echo "$? $(($(date +%s) - t0)) $limit" > "$work/$name.status"
    tail -n 4 "$work/$name.log" | sed 's/^/   /' >&2
}

if [ "$smoke" = 1 ]; then  # tiny: CPU minutes; the limits only catch a hang
    piece train_eager 600 "$py" bench/train_throughput.py --model convnext_atto --image-size 64 --batch-size 4 \
        --steps 2 --warmup 1 --skip loader --json "$work/train_eager.json"
    skip train_compiled "smoke run: torch.compile on a CPU takes minutes"
    piece scorecam 600 "$py" bench/cam_speed.py --model convnext_atto --image-size 64 --images 1 --top-k 8 \
        --json "$work/scorecam.json"
    piece llm 600 "$py" bench/llm_speed.py --repeats 1 --batch 2 --new-tokens 8 --prompt-tokens 30 \
        --json "$work/llm.json"
    piece loader 600 "$py" bench/train_throughput.py --photo-size 640x480 --photos 4 --image-size 64 \
        --batch-size 4 --repeats 1 --skip train --json "$work/loader.json"
    piece pytest_gpu 600 "$py" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$work/pytest_gpu.xml" tests
else  # the write-up's sizes; the limits sum to 460 s (7.7 min)
    piece train_eager 45 "$py" bench/train_throughput.py --model convnext_base --image-size 384 --batch-size 16 \
        --steps 20 --warmup 5 --skip loader --json "$work/train_eager.json"
    piece train_compiled 100 "$py" bench/train_throughput.py --model convnext_base --image-size 384 \
        --batch-size 16 --steps 20 --warmup 5 --compile on --skip loader --json "$work/train_compiled.json"
    piece scorecam 55 "$py" bench/cam_speed.py --model convnext_base --image-size 384 --images 4 \
        --json "$work/scorecam.json"
    piece llm 125 "$py" bench/llm_speed.py --gemma3-4b-shaped --repeats 1 --new-tokens 64 --json "$work/llm.json"
    piece loader 75 "$py" bench/train_throughput.py --photo-size 4032x3024 --photos 16 --image-size 384 \
        --batch-size 16 --repeats 1 --skip train --json "$work/loader.json"
    piece pytest_gpu 60 "$py" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$work/pytest_gpu.xml" tests
fi

"$py" bench/gpu_report.py "$work" "$out" --smoke "$smoke" --cuda "$cuda" --seconds $(($(date +%s) - started))
