#!/usr/bin/env bash
# Everything a GPU session checks, in one call on the device machine, most
# important first, each step capped and the whole within BUDGET_S seconds
# (a step that would start with under 20 s left is skipped and says so):
#
#   selftest f32, f16   conformance with transformers, the fused decode kernels
#                       against candle's composed ones, the device draw against
#                       its host reference, and the trainer's fused
#                       AdamW kernels against AdamW as tensor ops (#15, #17)
#   serve-two-engines   two engines on one GPU, each released at idle, the
#                       other serving through it, 0 MiB by NVML and nvidia-smi (#16)
#   side-by-side        ours (graphs, fused kernels, device draws on and off) vs
#                       transformers eager and compiled (#15)
#   lifecycle           load -> generate -> release cycles, 0 MiB after each,
#                       with nvidia-smi polled from outside (#15, #14); then
#                       10 more with the fused kernels and device draws on
#   train-speed         f32 vs bf16 and larger batches at equal tokens (#17)
#   selftest bf16, snapshots (pictures of the meter), oom (another process
#   holds all but 300 MiB)
#
#   packaging/cuda/gpu-session.sh CARRY_DIR OUT_DIR [BUDGET_S]
#
# CARRY_DIR comes from packaging/cuda/gpu-carry.sh. OUT_DIR receives
# gpu-session.tar.gz (every file, with side-by-side-table.md: docs/benchmarks.md's
# table from packaging/bench/gpu-table.py) and steps.txt (each step's exit status and
# seconds). DEVICE=cpu with a CPU build in CARRY_DIR is a dry run of the
# plumbing on a machine without a GPU (the PyTorch peers and the OOM step need
# one and are skipped).
set -uo pipefail
carry=$(cd "${1:?carry folder}" && pwd); out=${2:?out folder}; budget=${3:-540}
root=$(cd "$(dirname "$0")/../.." && pwd)
dev=${DEVICE:-cuda:0}
mkdir -p "$out"; out=$(cd "$out" && pwd)
res=$(mktemp -d)/gpu-session; mkdir -p "$res"
work=$(mktemp -d)
start=$(date +%s)
bin="$work/versifier"
packed=$(ls "$carry"/versifier.xz "$carry"/versifier.gz "$carry"/versifier 2>/dev/null | head -1)
bash "$root/packaging/cuda/unpack.sh" "${packed:?no versifier build in $carry}" "$bin" --exec
if [ "$dev" != cpu ]; then
  libdirs=$(bash "$root/packaging/cuda/cuda-lib-dirs.sh")
  export LD_LIBRARY_PATH="$libdirs:${LD_LIBRARY_PATH:-}" VERSIFIER_LIBS_SET=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv > "$res/gpu.csv" 2>&1
fi
mkdir -p "$work/corpus"
packed=$(ls "$carry"/corpus/train.txt.xz "$carry"/corpus/train.txt.gz 2>/dev/null | head -1)
[ -n "$packed" ] && bash "$root/packaging/cuda/unpack.sh" "$packed" "$work/corpus/train.txt" && cp "$carry/corpus/eval.txt" "$work/corpus/"
model="$root/models/tang-poems"   # the lifecycle's model until side-by-side makes the 124M one
cd "$root"

# step NAME CAP_S COMMAND...: runs COMMAND (stdout+stderr to NAME.log) under the
# smaller of CAP_S and what is left of the budget.
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt 20 ]; then echo "$name skipped (budget spent)" | tee -a "$res/steps.txt"; return; fi
  [ "$cap" -gt "$left" ] && cap=$left
  local t0=$(date +%s)
  timeout --kill-after=5 "$cap" bash -c '"$@"' "$name" "$@" > "$res/$name.log" 2>&1
  local rc=$?
  echo "$name exit $rc in $(( $(date +%s) - t0 )) s (cap $cap s)" | tee -a "$res/steps.txt"
}
selftest() { "$bin" selftest --fixtures tests/fixtures --device "$dev" --dtype "$1" > "$res/selftest-$1.json"; }
lifecycle() {
  # $1: a name; the environment picks the kernels. With the fused decode kernels
  # and the device draw on, their modules and the draw's state (held by the
  # captured graph) must go with each release too; a run of its own, so that a
  # kernel that faults does not cost the defaults' run.
  local name=$1 cycles=$2
  "$bin" --log-dir none bench --lifecycle --model "$model" --device "$dev" --dtype f32 --cycles "$cycles" --new-tokens 32 > "$res/$name.json" &
  local pid=$!
  if command -v nvidia-smi > /dev/null; then
    while kill -0 "$pid" 2>/dev/null; do
      echo "$(date +%s.%N) $(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | grep -E "^$pid," | paste -sd' ')"
      sleep 0.1
    done > "$res/$name-nvidia-smi.txt"
  fi
  wait "$pid"
}
side_by_side() {
  [ "$dev" = cpu ] && { echo "needs a GPU (PyTorch peers on CUDA)"; return 0; }
  SBS_PARTS="$res/side-by-side-parts" bash packaging/bench/gpu-side-by-side.sh "$bin" "$res/side-by-side.json" "$work/gpt2-124m-random"
}
train_speed() {
  [ -f "$work/corpus/train.txt" ] || { echo "no corpus in $carry/corpus"; return 2; }
  local steps=300 flags=""
  [ "$dev" = cpu ] && steps=8 flags="--n-layer 1 --n-head 2 --n-embd 64 --context 32"
  TRAIN_DEVICE=$dev TRAIN_FLAGS=$flags bash packaging/bench/train-speed.sh "$bin" "$work/corpus" "$steps" > "$res/train-speed.jsonl"
}
snapshots() {
  "$bin" --log-dir none snapshots --device "$dev" --out "$res/snapshots" --variations 8 --max-tokens 128
  rm -rf "$res/snapshots/app-data"
}
oom() {
  [ "$dev" = cpu ] && { echo "needs a GPU"; return 0; }
  OOM_SNAPSHOTS=0 bash packaging/cuda/oom-check.sh "$bin" "$res/oom" models/tang-poems 300
}

export bin dev res work model carry root
export -f selftest lifecycle side_by_side train_speed snapshots oom
step selftest-f32 60 selftest f32
step selftest-f16 60 selftest f16
serve_devices=$dev,$dev
step serve-two-engines 90 python3 packaging/cuda/serve-two-engines.py "$bin" "$res/serve-two-engines.json" --devices "$serve_devices"
step side-by-side 250 side_by_side
[ -f "$work/gpt2-124m-random/config.json" ] && export model="$work/gpt2-124m-random"
step lifecycle 45 lifecycle lifecycle 30
step lifecycle-fused-draws 30 env VERSIFIER_FUSED_KERNELS=1 VERSIFIER_DEVICE_DRAWS=1 bash -c 'lifecycle lifecycle-fused-draws 10'
step train-speed 150 train_speed
step selftest-bf16 40 selftest bf16
step snapshots 40 snapshots
step oom 60 oom
# Cut short, the side-by-side still left the runs it finished.
[ ! -f "$res/side-by-side.json" ] && [ -d "$res/side-by-side-parts" ] \
  && python3 packaging/bench/side-by-side-merge.py "$res/side-by-side-parts" "$res/side-by-side.json" > /dev/null 2>&1
[ -f "$res/side-by-side.json" ] && python3 packaging/bench/gpu-table.py "$res/side-by-side.json" > "$res/side-by-side-table.md" 2>&1
echo "total $(( $(date +%s) - start )) s of $budget" | tee -a "$res/steps.txt"
tar -C "$(dirname "$res")" -czf "$out/gpu-session.tar.gz" gpu-session
cp "$res/steps.txt" "$out/"
[ -f "$res/side-by-side-table.md" ] && cp "$res/side-by-side-table.md" "$out/"
exit 0
