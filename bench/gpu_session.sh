#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in parts that each fit one 10-minute call on a lent
# machine that has only torch, torchvision, numpy and Pillow (no ffcv, no DALI, no
# package index). Results go under $OUT (default ./gpu-out); read them, then copy the
# numbers into bench/RESULTS.md with the card's name.
#
#   bash bench/gpu_session.sh prep    # HERE, before the calls: writes gpu-photos/ (the
#                                     # photographs the photo set and the nvjpeg tests cut
#                                     # from, 6 MB) and gpu-wheels/ (pytest, 2 MB); carry
#                                     # both folders with each call
#   bash bench/gpu_session.sh smoke   # ~3 min: CUDA facts, the nvJPEG GPU decode path,
#                                     # the trainer end to end on it, the nvjpeg tests
#                                     # (CUDA ones included) when gpu-wheels/ came along
#   bash bench/gpu_session.sh bench   # ~8 min: python bench/throughput.py --device cuda, as
#                                     # two runs (--only loaders, then --only train)
#
# DEVICE=cpu rehearses smoke and bench on a CPU machine (what CI-like machines can check).
# Without gpu-photos/ a bare machine has no photographs (no scikit-image, no matplotlib):
# the bench then stops with one line (the demo data is cut from the same photographs).
set -u
part=${1:-smoke}
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
log() { echo "[gpu_session $(date +%H:%M:%S)] $*" | tee -a "$OUT/session.log"; }

# Carried folders: the exported photographs, and pytest's pure-Python wheels unpacked
# into a folder of their own (a wheel is a zip; no pip, nothing installed into the
# machine's Python).
[ -d gpu-photos ] && export FASTAIRL_PHOTO_SOURCES="$PWD/gpu-photos"
if [ "$part" != prep ] && [ -d gpu-wheels ] && ! "$PY" -c "import pytest" 2>/dev/null; then
    for w in gpu-wheels/*.whl; do "$PY" -m zipfile -e "$w" .gpu-pylib || exit 1; done
    export PYTHONPATH="$PWD/.gpu-pylib${PYTHONPATH:+:$PYTHONPATH}"
fi

case "$part" in
prep)
    [ -d gpu-photos ] || "$PY" data_prep/make_photo_set.py --export-sources gpu-photos || exit 1
    [ -d gpu-wheels ] || "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps \
        -d gpu-wheels pytest pytest-timeout pluggy iniconfig packaging pygments || exit 1
    log "prep: carry gpu-photos ($(du -sh gpu-photos | cut -f1)) and gpu-wheels ($(du -sh gpu-wheels | cut -f1))"
    ;;
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

    # test_nvjpeg needs pytest and the photographs; test_augment and test_dali also scipy,
    # scikit-image (and DALI), which only a full venv has.
    # TESTS=... picks the files (the rehearsal in the test suite keeps to test_nvjpeg.py).
    tests="tests/test_nvjpeg.py"
    "$PY" -c "import scipy, skimage" 2>/dev/null && tests="$tests tests/test_augment.py tests/test_dali.py"
    tests=${TESTS:-$tests}
    if "$PY" -c "import pytest" 2>/dev/null; then
        timeout 300 "$PY" -m pytest -q -rs -p no:cacheprovider $tests > "$OUT/pytest_cuda.log" 2>&1
        log "pytest $tests rc=$? ($(tail -n 1 "$OUT/pytest_cuda.log"))"
    else
        log "pytest not importable here: the CUDA tests did not run (run 'prep' and carry gpu-wheels)"
    fi
    ;;
bench)
    log "photo sources: ${FASTAIRL_PHOTO_SOURCES:-scikit-image/matplotlib if installed (else no photo set and no demo data)}"
    # Two runs, each writing its own report, so that a run cut off by the call's time limit
    # loses only its own half; the training half gets whatever the loader half left.
    # BENCH_ARGS adds flags to both (the rehearsal uses --quick).
    start=$SECONDS
    timeout 240 "$PY" bench/throughput.py --device "$DEVICE" --only loaders --out "$OUT/bench" \
        --name gpu-loaders ${BENCH_ARGS:-} > "$OUT/bench-loaders.log" 2>&1
    log "bench loaders rc=$? (report: $OUT/bench/gpu-loaders.md)"
    left=$((570 - (SECONDS - start)))
    timeout "$left" "$PY" bench/throughput.py --device "$DEVICE" --only train --out "$OUT/bench" \
        --name gpu-train ${BENCH_ARGS:-} > "$OUT/bench-train.log" 2>&1
    log "bench train rc=$? within ${left}s (report: $OUT/bench/gpu-train.md)"
    ;;
*)
    echo "usage: bash bench/gpu_session.sh prep|smoke|bench" >&2
    exit 2
    ;;
esac
