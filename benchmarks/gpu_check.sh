#!/usr/bin/env bash
# The prepared GPU check (issue 13): one command on a machine with one NVIDIA GPU and no network
# (Python packages installed from wheels brought along; nothing is downloaded), < 8 min. Prints:
#   1. the node check: driver vs torch's CUDA build, torch.cuda, gsplat's CUDA extension built;
#   2. SD 2.1-base at random init built from configs (scripts/build_random_sd21.py, no download);
#   3. bench_generate.py sd21 at the paper's settings (512 px, 4 views, fp16, 81,920 Gaussians,
#      densification active) for SDS and SCTD: s/iteration, peak GPU memory, projected minutes
#      per 5000-iteration asset (goal <= 6 min);
#   4. the gsplat-vs-torch backend test (tests/test_render.py, cuda-marked);
#   5. two prompts through `sctd3d run` with the local executor on the GPU.
# Exit 0 when every step passed; the summary at the end names each step's status.
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine (from the repository root)
#   bash benchmarks/gpu_check.sh --cpu-smoke DIR    # CPU smoke run of the same steps on the diffusers
#                                                   # SD in DIR at toy size (what CI tests)
# Env: PY (default .venv/bin/python), GPU_CHECK_OUT (work folder, default a new temp dir),
#      RUN_ITERS (iterations per prompt in step 5, default 300), BENCH_ITERS (default 20).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
MODEL=""
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    MODE=cpu
    MODEL="${2:?--cpu-smoke needs a diffusers SD directory}"
fi
PY="${PY:-.venv/bin/python}"
OUT="${GPU_CHECK_OUT:-$(mktemp -d -t sctd3d_gpu_check.XXXXXX)}"
RUN_ITERS="${RUN_ITERS:-300}"
BENCH_ITERS="${BENCH_ITERS:-20}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
declare -a SUMMARY=()
FAILED=0

step() {  # step NAME COMMAND...: run, time, record pass/fail
    local name="$1"; shift
    echo; echo "=== $name"
    local t0=$SECONDS
    "$@"
    local rc=$?
    local status=$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)")
    [[ $rc == 0 ]] || FAILED=1
    SUMMARY+=("$(printf '%-44s %-18s %4d s' "$name" "$status" $((SECONDS - t0)))")
}
skip() { SUMMARY+=("$(printf '%-44s %-18s' "$1" "skipped ($2)")"); }

if [[ $MODE == gpu ]]; then
    DEVICE=cuda SIZE=512 VIEWS=4 GAUSSIANS=81920 WARM=3 REPEATS=2
    MODEL="$OUT/stable-diffusion-2-1-base"
    step "1 node: driver, torch.cuda, gsplat build" "$PY" scripts/check_gpu_node.py --require-gsplat
    step "2 random-init SD 2.1-base from configs" "$PY" scripts/build_random_sd21.py "$MODEL"
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

printf 'a red cube\na blue sphere\n' > "$OUT/prompts.txt"
# Point-E weights and the metric checkpoints need the network: ball init, no scoring, no report
step "5 sctd3d run: 2 prompts, local executor" "$PY" -m pipeline.cli run "$OUT/prompts.txt" \
    --out "$OUT/run" --config sd21.yaml --executor local --set "prior.model=$MODEL" --set init.method=ball \
    --set "generate.iterations=$RUN_ITERS" --set generate.save_ply_at=[] --set pipeline.score=false \
    --set metrics.fid=false --set pipeline.report=false "${RUN_SETS[@]}"

echo; echo "=== summary ($MODE, work folder $OUT)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
