#!/usr/bin/env bash
# The checks of one lent GPU machine in one call (docs/gpu.md): the test suite on CUDA, the torchrun rows
# (NCCL, gloo) and the speed rows of every family's preset. Each part has its own time limit, so a slow part
# leaves the others their time; everything lands in OUT.
#   bash benchmarks/device_check.sh OUT DATA      (DATA: a folder with mnist/ and tiny-shakespeare's input.txt)
# Python packages the machine lacks travel as wheels in .whl/ (fastapi, pydantic, openai, ...).
set -uo pipefail
OUT=${1:?OUT folder}; DATA=${2:?data folder}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then     # into the interpreter itself: the tests' subprocesses set PYTHONPATH
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
fi
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
echo "== test suite (device auto = cuda)"
timeout "${SUITE_S:-200}" python3 -m pytest -n 14 -vv -p no:cacheprovider --timeout 150 -rfEs --durations=15 \
    >"$OUT/pytest.log" 2>&1
echo "pytest exit $?"; tail -n 40 "$OUT/pytest.log"
echo "== torchrun on CUDA"
timeout "${DDP_S:-90}" python3 benchmarks/cuda.py --ddp --text "$DATA/input.txt" --steps 300 --out "$OUT/ddp.json" \
    --runs /tmp/aigc-ddp
echo "== speed rows"
ROWS=diffusion-mnist,diffusion-shapes,gpt-text,gan-mnist,vae-mnist,video-diffusion,video-gan
timeout "${SPEED_S:-170}" python3 benchmarks/cuda.py --mnist "$DATA/mnist" --text "$DATA/input.txt" --modes amp \
    --only "${SPEED_ONLY:-$ROWS}" --steps 300 --out "$OUT/speed.json" --runs /tmp/aigc-speed
echo "done"
