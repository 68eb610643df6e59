#!/usr/bin/env bash
# The prepared GPU check (issues 13, 20 item 5): one command on a machine with one NVIDIA GPU, its
# own torch (CUDA build) and transformers 5, and no network; < 8 min. Nothing is downloaded and the
# machine's packages are not changed: only the wheels brought along (scripts/gpu_check_wheels.sh:
# diffusers, gsplat, plyfile and small helpers, 34 MiB; no Ray, no metrics) are installed, where
# missing, into the work folder. Prints:
#   0. the environment: python, torch + CUDA, transformers, hub; which carried wheels it installed;
#   1. the node check: driver vs torch's CUDA build, torch.cuda, gsplat's CUDA extension built
#      (run in the background while step 2 runs: the JIT build and the weights overlap);
#   2. SD 2.1-base at random init built from configs (scripts/build_random_sd21.py, no download);
#   3. bench_generate.py sd21 at the paper's settings (512 px, 4 views, fp16, 81,920 Gaussians,
#      densification active) for SDS and SCTD: s/iteration, peak GPU memory, projected minutes
#      per 5000-iteration asset (goal <= 6 min);
#   4. the gsplat-vs-torch backend test (tests/test_render.py, cuda-marked);
#   5. two prompts through `sctd3d generate` on the GPU (5.1, 5.2) (generation only: `sctd3d run` needs
#      pyarrow for its manifest, which is not carried).
#   6. benchmarks/bench_components.py: one UNet forward at batch 4 and 8, the VAE encoder forward +
#      backward at 4 x 512 px (ms, FLOPs from FlopCounterMode, achieved TFLOP/s), gsplat forward +
#      backward at 81,920 and 327,680 Gaussians (ms);
#   7. host syncs per generate iteration (SCTD, 10 iterations) under torch.cuda.set_sync_debug_mode;
#   8. eager vs prior.compile UNet time (benchmarks/bench_compile.py; last, optional).
# Every step runs under what is left of the budget (GPU_CHECK_BUDGET_S, default 480 s on the GPU,
# 3600 s for the CPU smoke run); a step cut
# short fails with exit 124. Exit 0 when every step passed; the summary names each step's status.
#
#   bash scripts/gpu_check_wheels.sh                # here, once: fetch the wheels (gpu_check_wheels/)
#   bash benchmarks/gpu_check.sh                    # on the GPU machine (from the repository root)
#   bash benchmarks/gpu_check.sh --cpu-smoke DIR    # CPU smoke run of steps 0, 3, 5-7 on the
#                                                   # diffusers SD in DIR at toy size (what CI tests)
# Env: PY (default .venv/bin/python when present, else python3), GPU_CHECK_WHEELS (default
#      gpu_check_wheels), GPU_CHECK_OUT (work folder, default a new temp dir), GPU_CHECK_BUDGET_S,
#      RUN_ITERS (iterations per prompt in step 5, default 300), BENCH_ITERS (default 20).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
MODEL=""
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    MODE=cpu
    MODEL="${2:?--cpu-smoke needs a diffusers SD directory}"
fi
if [[ -z "${PY:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS="${GPU_CHECK_WHEELS:-gpu_check_wheels}"
OUT="${GPU_CHECK_OUT:-$(mktemp -d -t sctd3d_gpu_check.XXXXXX)}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-$([[ $MODE == gpu ]] && echo 480 || echo 3600)}"  # 8 min on the GPU
RUN_ITERS="${RUN_ITERS:-300}"
BENCH_ITERS="${BENCH_ITERS:-20}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project from this tree, not installed
mkdir -p "$OUT"
declare -a SUMMARY=()
FAILED=0

left() { local l=$((BUDGET_S - SECONDS)); echo $((l > 1 ? l : 1)); }
record() {  # record NAME RC SECONDS
    local status=$([[ $2 == 0 ]] && echo ok || echo "FAILED (exit $2)")
    [[ $2 == 0 ]] || FAILED=1
    SUMMARY+=("$(printf '%-44s %-18s %4d s' "$1" "$status" "$3")")
}
step() {  # step NAME COMMAND...: run within the budget left, time, record pass/fail
    local name="$1"; shift
    echo; echo "=== $name"
    local t0=$SECONDS
    timeout --kill-after=10 "$(left)" "$@"
    record "$name" $? $((SECONDS - t0))
}
skip() { SUMMARY+=("$(printf '%-44s %-18s' "$1" "skipped ($2)")"); }

# 0. the carried wheels, where the machine lacks them, into $OUT/site (PYTHONPATH and PATH set here)
echo; echo "=== 0 environment: machine packages + carried wheels"
T0=$SECONDS
timeout "$(left)" "$PY" scripts/gpu_check_env.py --wheels "$WHEELS" --target "$OUT/site" > "$OUT/env.sh"
ENV_RC=$?
record "0 environment: machine packages + wheels" $ENV_RC $((SECONDS - T0))
if [[ $ENV_RC != 0 ]]; then
    echo; echo "=== summary ($MODE, work folder $OUT): the environment is incomplete, nothing else ran"
    printf '%s\n' "${SUMMARY[@]}"
    exit 1
fi
source "$OUT/env.sh"

if [[ $MODE == gpu ]]; then
    DEVICE=cuda SIZE=512 VIEWS=4 GAUSSIANS=81920 WARM=3 REPEATS=2
    MODEL="$OUT/stable-diffusion-2-1-base"
    if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then  # build gsplat for this GPU only
        TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null)"
        export TORCH_CUDA_ARCH_LIST
    fi
    echo; echo "=== 1 node check + gsplat build: in the background (log: $OUT/node.log)"
    T1=$SECONDS
    timeout --kill-after=10 "$(left)" "$PY" scripts/check_gpu_node.py --require-gsplat > "$OUT/node.log" 2>&1 &
    NODE_PID=$!
    step "2 random-init SD 2.1-base from configs" "$PY" scripts/build_random_sd21.py "$MODEL"
    wait $NODE_PID
    NODE_RC=$?
    echo; echo "=== 1 node: driver, torch.cuda, gsplat build"; cat "$OUT/node.log"
    record "1 node: driver, torch.cuda, gsplat build" $NODE_RC $((SECONDS - T1))
    RUN_SETS=(--set prior.device=cuda)
else
    DEVICE=cpu SIZE=16 VIEWS=1 GAUSSIANS=256 WARM=1 REPEATS=1 BENCH_ITERS=1 RUN_ITERS=2
    skip "1 node: driver, torch.cuda, gsplat build" "cpu smoke"
    skip "2 random-init SD 2.1-base from configs" "cpu smoke: $MODEL"
    RUN_SETS=(--set prior.allow_cpu=true --set prior.image_size=16 --set generate.batch_views=1
              --set init.ball_num_gaussians=256 --set render.num_views=2 --set render.resolution=16
              --set render.video=false)
fi

step "3 bench_generate sd21 (sds, sctd)" "$PY" benchmarks/bench_generate.py sd21 --methods sds,sctd \
    --model "$MODEL" --device "$DEVICE" --size "$SIZE" --views "$VIEWS" --gaussians "$GAUSSIANS" \
    --iters "$BENCH_ITERS" --warm "$WARM" --repeats "$REPEATS"

if [[ $MODE == gpu ]]; then
    step "4 gsplat vs torch backend test" "$PY" -m pytest -q -m cuda tests/test_render.py
else
    skip "4 gsplat vs torch backend test" "needs CUDA"
fi

I=0
for PROMPT in "a red cube" "a blue sphere"; do  # Point-E weights need the network: ball init
    I=$((I + 1))
    step "5.$I sctd3d generate \"$PROMPT\"" "$PY" -m pipeline.cli generate "$PROMPT" --out "$OUT/gen/$I" \
        --quiet --config sd21.yaml --set "prior.model=$MODEL" --set init.method=ball \
        --set "generate.iterations=$RUN_ITERS" --set generate.save_ply_at=[] "${RUN_SETS[@]}"
done

# 6-8 (issue 21): component timings + achieved TFLOP/s, host syncs per iteration, eager vs compiled UNet
if [[ $MODE == gpu ]]; then
    COMP_ARGS=(--unet-batches 4,8 --vae-batch 4 --gaussians 81920,327680 --views 4 --reps 10 --warm 3)
    SYNC_ARGS=(--syncs 10 --gaussians 81920 --views 4)
else
    COMP_ARGS=(--unet-batches 1 --vae-batch 1 --reps 1 --warm 0)
    SYNC_ARGS=(--syncs 2 --gaussians 256 --views 1)
fi
step "6 component timings (UNet, VAE, gsplat)" "$PY" benchmarks/bench_components.py --model "$MODEL" \
    --device "$DEVICE" --size "$SIZE" "${COMP_ARGS[@]}"
step "7 host syncs per iteration (sync debug)" "$PY" benchmarks/bench_components.py --model "$MODEL" \
    --device "$DEVICE" --size "$SIZE" "${SYNC_ARGS[@]}"
if [[ $MODE == gpu ]]; then  # last: optional, compile time is the longest part (cut by the budget)
    step "8 eager vs prior.compile UNet" "$PY" benchmarks/bench_compile.py --model "$MODEL" \
        --modes none,default,reduce-overhead --calls 10
else
    skip "8 eager vs prior.compile UNet" "needs CUDA"
fi

echo; echo "=== summary ($MODE, work folder $OUT)"
printf '%s\n' "${SUMMARY[@]}" | sort -s -n -k1,1
exit $FAILED
