#!/usr/bin/env bash
# Every bench on a CUDA machine, in priority order, each log into $OUT (or bench-cuda/).
# Used on the lent GPU machine, whose Python has torch but not diffusers: run
#   python3 -m pip install --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site bench/cuda.sh
# with the wheels this project pins (see docs/benchmarks.md). InvokeAI is measured when
# $INVOKEAI_PATH names a folder it can be imported from.
set -u
out=${OUT:-bench-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
inv=()
[ -n "${INVOKEAI_PATH:-}" ] && inv=(--invokeai-path "$INVOKEAI_PATH")
$py bench/lora_apply.py --device cuda --size full --repeats 5 "${inv[@]}" --write-docs 2>&1 \
    | tee "$out/lora_apply.txt"
$py bench/lora_phases.py --device cuda 2>&1 | tee "$out/lora_phases.txt"
# patch strategies on SDXL fp16 as a 12 GB card would see it (#15)
$py bench/lora_apply.py --strategies --device cuda --model sdxl --dtype fp16 --cap-gb 12 \
    --repeats 3 --write-docs 2>&1 | tee "$out/lora_strategies.txt"
$py bench/lcm_speed.py --device cuda --size full --breakdown --repeats 10 2>&1 \
    | tee "$out/lcm_breakdown.txt"
$py bench/lcm_speed.py --device cuda --size full --repeats 7 2>&1 | tee "$out/lcm_speed.txt"
$py bench/lora_switch.py --device cuda --switches 10 --unet-steps 10 2>&1 \
    | tee "$out/lora_switch.txt"
cp docs/benchmarks.md "$out/"
# generation end to end on the GPU (fp16 root: same pixels twice, weights restored bit for bit)
$py -m pytest -q -p no:cacheprovider tests/generation/test_cache.py tests/lora/test_patch.py \
    -k "on_its_device" 2>&1 \
    | tee "$out/pytest_cuda.txt"
