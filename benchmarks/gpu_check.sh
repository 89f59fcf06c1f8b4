#!/usr/bin/env bash
# The one GPU check of issues #14 and #15, for a lent H100/H200 (about 12 device-minutes), prepared on CPU.
#
# Prepare here (once; the carried folders are git-ignored, 64 MiB in all):
#   bash benchmarks/gpu_carry.sh        # wheels the GPU image lacks (.whl/) and the shared CTs (.gpu_carry/)
# Run there (device tool: carry [".whl", ".gpu_carry"], timeout_s 600):
#   bash benchmarks/gpu_check.sh
# It prints and packs into $OUT/gpu_results.tgz: the card, the training step vs the pix2pix references (both modes
# and the GPU profile, TFLOP/s and fraction of bf16 peak), convert's stage profile against the naive loop, and a
# short quality run with the GPU profile. Record the figures in benchmarks/RESULTS.md with the card named.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  for x in .whl/*.tar.xz; do [ -e "$x" ] && tar -xJf "$x" -C /tmp/site; done  # SimpleITK, unpacked and xz'd
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
[ -d .gpu_carry/shared ] && export MEDTRANS_SHARED="$PWD/.gpu_carry/shared"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, monai, SimpleITK; assert torch.cuda.is_available(); print(torch.__version__, monai.__version__)" \
  | tee -a "$OUT/gpu.txt" || exit 1
run() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"; }
run train_throughput 150 python3 benchmarks/train_throughput.py --device cuda
run convert 90 python3 benchmarks/convert.py --device cuda
run quality_gpu 300 python3 benchmarks/quality.py --device cuda --minutes 3 --config gpu --tag gpu-3min --out /tmp/q
cp /tmp/q/quality_gpu-3min.json "$OUT/" 2>/dev/null
tar -czf "$OUT/gpu_results.tgz" -C "$OUT" --exclude gpu_results.tgz .
