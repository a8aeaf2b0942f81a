#!/usr/bin/env bash
# The two-trial GPU check (issue 22, item 6) as one script, under 10 minutes on one GPU (timeouts: install 2 min,
# sweep 5.5 min, throughput 3.5 min):
#   1. install raytickets as the README does (torch pinned; a torch that already sees a GPU is kept);
#   2. a 2-trial sweep (MiniLM on SST-2, IMP, seeds 0 and 1) on the GPU, from build/gpu-check, which
#      `python benchmarks/gpu_check.py` writes beforehand (45 MiB: carry it to the GPU machine), then its summary;
#   3. benchmarks/gpu_throughput.py: fp32 / bf16 / 2:4 side by side, raytickets' loop against the HF Trainer.
# Logs, the summary and the sweep's Parquet tables land in $OUT (a device runner's folder), else build/gpu-check-out.
#
#   bash benchmarks/gpu_check.sh         # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu   # the same steps on this machine's CPUs at toy sizes, no install
set -euo pipefail
cd "$(dirname "$0")/.."
CHECK=build/gpu-check
OUT=${OUT:-build/gpu-check-out}  # not inside $CHECK, which travels to the GPU machine
CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
if [ ! -f "$CHECK/sweep.yaml" ]; then
  echo "gpu_check: no $CHECK/sweep.yaml; run python benchmarks/gpu_check.py first and carry $CHECK along"
  exit 2
fi
mkdir -p "$OUT"
start=$SECONDS
stamp() { echo "[gpu_check $((SECONDS - start)) s] $*"; }

if [ "$CPU" = 0 ]; then
  # README: pip install torch==2.13.0 -e ".[test]" (the test extra renders reports and exports ONNX: not needed).
  # 2.13.0 is the CPU build's version there; PyPI's Linux wheel of it is a CUDA build, and a CUDA torch already
  # installed is kept at its version. Without a package index, raytickets alone over what is installed (it must
  # be installed, not only importable: its sweep modes are entry points; setuptools >= 77 builds it).
  TORCH=$(python -c 'import torch; print(torch.__version__.split("+")[0] if torch.cuda.is_available() else "")' \
          2>/dev/null || true)
  stamp "install: torch==${TORCH:-2.13.0} -e ."
  timeout 120 pip install -q "torch==${TORCH:-2.13.0}" -e . 2>&1 | tail -5 ||
    { stamp "no package index: pip install --no-deps -e ."; pip install -q --no-deps --no-build-isolation -e .; }
  python -c 'import torch; assert torch.cuda.is_available(), "gpu_check: torch sees no CUDA device"
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(),
      "capability", torch.cuda.get_device_capability())' | tee "$OUT/device.txt"
  SIZES=()
else  # toy sizes on CPU workers: checks the config, the paths and the commands, not the GPU
  SIZES=(resources.use_gpu=false resources.cpus_per_worker=1.9 resources.num_cpus=2 ticket.data.max_train_examples=32
         ticket.data.max_dev_examples=32 ticket.train.batch_size=16 ticket.train.threads=1)
fi

# a private Ray temp dir (short: Ray caps its socket paths), and the trajectories' work (full models' and rounds'
# weights for resume, 87 MB each) beside it: only the Parquet tables, Tune's state and the logs go to $OUT
TEMP=$(mktemp -d /tmp/rtgpuXXXX)
PORT=$(python -c 'from raytickets.sweep.cluster import free_port; print(free_port())')
stamp "sweep: $CHECK/sweep.yaml ${SIZES[*]:-}"
if timeout 330 python -m raytickets.sweep --config "$CHECK/sweep.yaml" --temp-dir "$TEMP" --dashboard-port "$PORT" \
     storage_path="$OUT/results" work_dir="$TEMP/work" ${SIZES[@]+"${SIZES[@]}"} >"$OUT/sweep.log" 2>&1; then
  stamp "sweep: done"
else
  stamp "sweep: exit status $? (timeout: 124)"
fi
tail -15 "$OUT/sweep.log"
rm -rf "$TEMP/work"  # the weights; Ray's logs stay in $TEMP
RESULTS="$OUT/results/gpu-check/results"
if [ -d "$RESULTS/rounds" ]; then
  python -m raytickets.cli analyze "$RESULTS" >"$OUT/analyze.log" 2>&1 || stamp "analyze failed (see $OUT/analyze.log)"
  tail -20 "$OUT/analyze.log"
else
  stamp "sweep: no rounds written (see $OUT/sweep.log)"
fi

stamp "throughput"
if [ "$CPU" = 0 ]; then
  timeout 210 python benchmarks/gpu_throughput.py --minilm "$CHECK/minilm-bf16" --steps 30 --warmup 5 --repeats 3 \
    2>&1 | grep -v "it/s\]" | tee "$OUT/throughput.txt" || true
else
  python benchmarks/gpu_throughput.py || true  # no CUDA: one line
  python benchmarks/gpu_throughput.py --cpu-check --minilm "$CHECK/minilm-bf16" 2>&1 | grep -v "it/s\]" \
    | tee "$OUT/throughput.txt" || true
fi
stamp "done; figures in $OUT"
