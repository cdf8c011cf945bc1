#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in two parts that each fit one 10-minute call on a
# lent machine that has only torch, torchvision, numpy and Pillow (no ffcv, no DALI, no
# package index). Results go under $OUT (default ./gpu-out); read them, then copy the
# numbers into bench/RESULTS.md with the card's name.
#
#   bash bench/gpu_session.sh smoke   # ~3 min: CUDA facts, the nvJPEG GPU decode path,
#                                     # the trainer end to end on it, the CUDA-only tests
#                                     # (if pytest is importable)
#   bash bench/gpu_session.sh bench   # ~8 min: python bench/throughput.py --device cuda
#
# DEVICE=cpu rehearses the smoke part on a CPU machine (what CI-like machines can check).
#
# The benchmark's default data on a GPU is a photo set cut from the photographs that
# scikit-image and matplotlib ship; a bare machine has neither. Export them first (on the
# development machine: `python data_prep/make_photo_set.py --export-sources gpu-photos`,
# about 6 MB) and carry the gpu-photos folder with the call: this script then points
# FASTAIRL_PHOTO_SOURCES at it and the set is the same as on the development machine.
set -u
part=${1:-smoke}
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
log() { echo "[gpu_session $(date +%H:%M:%S)] $*" | tee -a "$OUT/session.log"; }

case "$part" in
smoke)
    { command -v nvidia-smi >/dev/null && nvidia-smi
      "$PY" -c "import sys, torch, torchvision, numpy, PIL; print(sys.version); print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
      "$PY" -c "import torch; print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))" 2>/dev/null
    } > "$OUT/machine.txt" 2>&1
    log "machine: $(tail -n 2 "$OUT/machine.txt" | tr '\n' ' ')"

    # nvJPEG decode of real JPEGs against the CPU decoder, and a GPU crop+augment batch.
    timeout 240 "$PY" - "$DEVICE" > "$OUT/nvjpeg_check.txt" 2>&1 <<'EOF'
import sys, time, torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from fastairl.data.demo import ensure_demo_data
from fastairl.data.folder import image_folder
from fastairl.data.nvjpeg_loader import decode_on_cpu
dev = torch.device(sys.argv[1])
root = ensure_demo_data()
paths = [p for p, _ in image_folder(root / "train").samples][::10][:64]
datas = [read_file(p) for p in paths]
gpu = decode_jpeg(datas, mode=ImageReadMode.RGB, device=dev) if dev.type == "cuda" else [decode_on_cpu(d) for d in datas]
worst = max(float((g.cpu().float() - decode_on_cpu(d).float()).abs().mean()) for g, d in zip(gpu, datas))
print(f"decoded {len(datas)} JPEGs on {dev}; worst mean |GPU - CPU| = {worst:.3f} levels")
if dev.type == "cuda":
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(5):
        decode_jpeg(datas, mode=ImageReadMode.RGB, device=dev)
    torch.cuda.synchronize()
    print(f"nvJPEG batch decode: {5 * len(datas) / (time.perf_counter() - t):.0f} images/s (demo JPEGs ~400x350)")
assert worst < 3.0, "GPU and CPU decodes differ by more than JPEG decoder rounding"
print("ok")
EOF
    log "nvjpeg check rc=$? ($(tail -n 1 "$OUT/nvjpeg_check.txt"))"

    # The trainer end to end on the GPU decode path (AMP, channels_last, GPUAugment on CUDA).
    timeout 300 "$PY" fastairl/train.py --exp moco_v2p --data demo --loader nvjpeg --device "$DEVICE" \
        --max-steps 20 --output-dir "$OUT/train" --overwrite > "$OUT/train_nvjpeg.log" 2>&1
    log "train nvjpeg rc=$? ($(grep -c 'images_per_s' "$OUT/train/moco_v2p/log.jsonl" 2>/dev/null) log rows)"

    if "$PY" -c "import pytest, scipy, skimage" 2>/dev/null; then
        timeout 600 "$PY" -m pytest -q -rs tests/test_nvjpeg.py tests/test_augment.py tests/test_dali.py \
            > "$OUT/pytest_cuda.log" 2>&1
        log "pytest rc=$? ($(tail -n 1 "$OUT/pytest_cuda.log"))"
    else
        log "pytest/scipy/scikit-image not importable here: CUDA tests not run (carry their wheels to run them)"
    fi
    ;;
bench)
    if [ -d gpu-photos ]; then
        export FASTAIRL_PHOTO_SOURCES="$PWD/gpu-photos"
        log "photo set sources: $FASTAIRL_PHOTO_SOURCES"
    else
        log "no gpu-photos folder: without scikit-image or matplotlib the bench uses the procedural demo data"
    fi
    timeout 570 "$PY" bench/throughput.py --device "$DEVICE" --out "$OUT/bench" --name gpu > "$OUT/bench.log" 2>&1
    log "bench rc=$? (report: $OUT/bench/gpu.md)"
    ;;
*)
    echo "usage: bash bench/gpu_session.sh smoke|bench" >&2
    exit 2
    ;;
esac
