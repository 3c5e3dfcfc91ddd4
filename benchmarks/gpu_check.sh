#!/usr/bin/env bash
# Everything the GPU path needs checked, in one go, on a machine with a CUDA device:
# the CUDA tests, per-model timings (bench_networks.py), per-stage profiles
# (profile_network.py) and one training step per method (bench_train_step.py: steps/s and peak
# GPU memory at batch 4, bf16, BP-Net at 256x1216, SelfDC at 240x1216). Writes JSON and logs to OUT_DIR (default output/gpu_check) and prints
# a short summary last.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [PART ...]
#
# PARTs: tests, sparse, timings, compiled, profiles, training, onnx, cameras (default: all). Each takes a few minutes;
# on a machine with a per-command time limit, run them in separate calls into one OUT_DIR.
#
# Uses the python on PATH (PYTHON=... to override): a CUDA build of torch with numpy, scipy,
# opencv and safetensors. The KITTI frames are read from ../shared/data as in the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=$(realpath -m "${1:-output/gpu_check}")
shift || true
PARTS=" ${*:-tests sparse timings compiled profiles training onnx cameras} "
want() { [[ $PARTS == *" $1 "* ]]; }
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

"$PY" - <<'EOF' || { echo "gpu_check: torch sees no CUDA device; run this on a GPU machine" >&2; exit 2; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
EOF

tests_rc=0
if want tests; then
    echo "== CUDA tests"
    timeout 600 "$PY" -m pytest -q -p no:cacheprovider test/test_cuda.py test/test_sparse_ops.py \
        test/test_bpnet.py test/test_nlspn.py test/test_network_backend.py \
        test/test_checkpoints.py >"$OUT_DIR/pytest.log" 2>&1
    tests_rc=$?
    tail -n 3 "$OUT_DIR/pytest.log"
fi

cd benchmarks
if want sparse; then
    echo "== neighbour search and dynamic filter"
    timeout 300 "$PY" bench_sparse_ops.py --device cuda \
        >"$OUT_DIR/sparse_ops.json" 2>"$OUT_DIR/sparse_ops.log"
fi
if want timings; then
    echo "== per-model timings, eager"
    timeout 900 "$PY" bench_networks.py --devices cuda --runs 30 \
        >"$OUT_DIR/networks.json" 2>"$OUT_DIR/networks.log"
fi
if want compiled; then
    echo "== per-model timings, torch.compile"
    timeout 1200 "$PY" bench_networks.py --devices cuda --runs 30 --compile \
        --precisions fp16 bf16 >"$OUT_DIR/networks_compiled.json" 2>"$OUT_DIR/networks_compiled.log"
fi
if want cameras; then
    echo "== several cameras, one model: batched vs one by one vs a model each (CUDA)"
    for model in selfdc_r18 selfdc; do
        timeout 600 "$PY" bench_cameras.py --model "$model" --cameras 4 --device cuda --runs 20 \
            >"$OUT_DIR/cameras_$model.json" 2>"$OUT_DIR/cameras_$model.log"
    done
fi
if want profiles; then
    echo "== per-stage profiles"
    for model in bpnet selfdc; do
        for precision in fp32 bf16; do
            timeout 300 "$PY" profile_network.py --model "$model" --device cuda \
                --precision "$precision" >"$OUT_DIR/profile_${model}_${precision}.txt" 2>&1
        done
    done
fi
if want training; then
    echo "== training step per method (batch 4, bf16)"
    # TRAIN_ARGS is appended (the last value wins), e.g. "--device cpu --crop 64 128 --steps 1"
    # for a dry run of this part on a CPU
    # shellcheck disable=SC2086
    timeout 600 "$PY" bench_train_step.py --device cuda --batch 4 --precision bf16 --steps 5 \
        --models bpnet selfdc ${TRAIN_ARGS:-} \
        >"$OUT_DIR/train_step.json" 2>"$OUT_DIR/train_step.log"
fi
if want onnx; then
    echo "== ONNX Runtime: TensorRT fp32/fp16 and CUDA EP against torch (same random weights)"
    # needs onnxruntime-gpu (pip install onnxruntime-gpu==1.32.0, replacing onnxruntime) and,
    # for TensorRT, its libraries (pip install tensorrt-cu12); without them ORT runs on the CPU
    # and says so in the log. parity_vs_torch_fp32 in each result is the FP16 figure for fp16.
    timeout 900 "$PY" bench_networks.py --devices cuda --runs 30 --precisions fp32 fp16 \
        --runtimes torch onnxruntime --models selfdc_r18 selfdc bpnet \
        >"$OUT_DIR/networks_trt.json" 2>"$OUT_DIR/networks_trt.log"
    timeout 600 "$PY" bench_networks.py --devices cuda --runs 30 --precisions fp32 \
        --runtimes onnxruntime --ort-providers CUDAExecutionProvider,CPUExecutionProvider \
        --models selfdc_r18 selfdc bpnet >"$OUT_DIR/networks_ort_cuda.json" \
        2>"$OUT_DIR/networks_ort_cuda.log"
fi
cd ..

"$PY" - "$OUT_DIR" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
targets = {"bpnet": 60.0, "selfdc": 25.0}
for name in ("networks.json", "networks_compiled.json", "networks_trt.json", "networks_ort_cuda.json"):
    path = out / name
    try:
        report = json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        print(f"{name}: no result (see {path.with_suffix('.log')})")
        continue
    print(f"{name}: {report['machine'].get('cuda_device')}")
    for r in report["results"]:
        if "error" in r:
            print(f"  {r['model']:<11} {r['precision']:<5} error: {r['error']}")
            continue
        if r.get("runtime") == "onnxruntime":
            print(
                f"  {r['model']:<11} {r['precision']:<5} ORT {r['providers'][0]} frame p50 "
                f"{r['frame_ms_median']:7.1f} ms  parity {r['parity_vs_torch_fp32']:.2g}"
            )
            continue
        goal = targets.get(r["model"])
        verdict = "" if goal is None else ("meets" if r["frame_ms_median"] <= goal else "misses")
        print(
            f"  {r['model']:<11} {r['precision']:<5} frame p50 {r['frame_ms_median']:7.1f} ms"
            f"  forward p50 {r['forward_ms_median']:7.1f} ms  peak {r.get('peak_cuda_mb')} MB"
            f"  {verdict} {goal or ''}"
        )
path = out / "train_step.json"
if path.exists():
    try:
        report = json.loads(path.read_text())
    except ValueError:
        report = None
        print(f"train_step.json: no result (see {path.with_suffix('.log')})")
    for r in (report or {}).get("results", []):
        if "error" in r:
            print(f"  train {r['model']:<8} error: {r['error']}")
            continue
        peak = r.get("peak_gpu_gb", r["peak_rss_gb"])
        where = "GPU" if "peak_gpu_gb" in r else "RSS"
        print(
            f"  train {r['model']:<8} {r['precision']} batch {r['batch']} "
            f"{r['crop'][0]}x{r['crop'][1]} on {r['device']}: {r['steps_per_s']:.2f} steps/s "
            f"({r['samples_per_s']:.1f} samples/s), peak {where} {peak:.1f} GB"
        )
for path in sorted(out.glob("profile_*.txt")):
    lines = path.read_text().strip().splitlines()
    try:
        prof = json.loads(lines[-1])
    except (ValueError, IndexError):
        print(f"{path.name}: no result")
        continue
    top = sorted(prof["stage_ms_median"].items(), key=lambda kv: -kv[1])[:6]
    print(
        f"{path.stem}: forward {prof['forward_ms_median']} ms, "
        f"{prof['cuda_kernels_per_forward']} kernels; "
        + ", ".join(f"{k} {v}" for k, v in top)
    )
EOF
echo "results in $OUT_DIR"
exit $tests_rc
