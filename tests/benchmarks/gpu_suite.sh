#!/usr/bin/env bash
# Every real-size figure of the project on a lent GPU box: about 48 minutes of part budgets in all, so on the device's
# 600 s per command run it as the six `--only` groups listed by the GPU budgets below, one device command each.
#
#   bash tests/benchmarks/gpu_suite.sh [--dry-run] [--out DIR] [--only part,part]
#
# On the box (Python 3.12 + CUDA torch, no package index): first `make gpu-wheels` here, then run
# with .whl carried (tests/benchmarks/README.md). The script installs .whl/*.whl into /tmp/site, puts
# /tmp/site:.whl/src on PYTHONPATH, prints python/torch/GPU facts, and runs each part under its own
# `timeout`, so one failing part leaves the others' figures:
#   teacher        bench_tracker.py: Hiera-L at 1024, 49 frames: clip_batch 1/4/8 vs the stock predictor
#   teacher_compiled  bench_tracker.py --compile --clip-batch 8: the same Hiera-L with teacher.compile (image encoder +
#                  memory attention, inductor), our tracker only: warmup_s = compile + one full-length batch
#   teacher_cast   bench_tracker.py --cast-weights --image-batch 8,16 --clip-batch 8: eager Hiera-L, teacher.cast_weights
#                  (bf16 weights) beside autocast on fp32 weights, each at image_batch 8 and 16, in one process on the
#                  same clips: clips/h ratios, and the cast features' relative L2 difference and mask IoU against autocast
#   teacher_loop   bench_tracker.py --compile --compile-loop --clip-batch 8: teacher.compile_loop (the per-frame loop's
#                  memory encoder, prompt encoder and mask decoder compiled too); compare with teacher_compiled
#   encodings      bench_encodings.py: CogVideoX VAE + T5-XXL at 49x480x720, VAE tiling on and off
#   extract_inproc bench_extract.py --real-size: extraction in-process (ray.num_workers=0) of 8 sample clips rendered at
#                  49x480x720, teacher at 1024, tiny-width models (no weights on the box): wall/model, model s per column
#   eval_sampling  bench_sampling.py: `evaluate`'s sampling, the stock CogVideoX-5B-I2V pipeline around random-weight
#                  real-size models (transformer, VAE, T5-XXL) at 49x480x720, guidance 6: s/step, the fixed cost
#                  (prompt, image encode, VAE decode) and the estimate per 50-step sample, from samples of 2 and 4 steps
#   step           bench_step.py --real: CogVideoX-5B-I2V LoRA r128 distill step, lgf vs plain (eager)
#   step_compile   the same with student.compile (each block torch.compiled, inductor): first step = compile time
#   step_fp8       the same with student.compile + student.fp8 (torchao Float8Linear on the frozen block linears;
#                  compiled, as torchao's casts are only fast fused; compare with step_compile). Skipped with the
#                  trainer's one-line refusal where it cannot run (no torchao, compute capability < 8.9)
#   step_selective bench_step.py --real --checkpointing auto,all: selective activation checkpointing (student.checkpointing,
#                  stages/distill/recompute.py), the memory plan's choice for an 80 GB GPU (--gpu-memory-gb 80: blocks:22
#                  of 42; on the H200's own 140 GB the plan says none) against all, on one student in one process (lgf
#                  steps interleaved): s/step, peak and planned GiB per spec, ratio auto/all
#   step_xformers  the same with student.attention=xformers (skipped when xformers does not import)
#   fsdp           bench_step.py --real --strategy fsdp: one FSDP2 step on one GPU
#   wan_step       bench_step.py --preset wan-1.3b: Wan 2.1 T2V 1.3B LoRA r128 step at 81x480x832 (latents 21x60x104,
#                  512 text tokens; random weights built on the GPU), lgf vs plain: s/step, peak GiB
#   wan14b_fsdp    bench_step.py --preset wan-14b --strategy fsdp: Wan 2.1 T2V 14B, FSDP2 on one GPU, the same shape
#   context        bench_context.py: parallel.context (diffusers' Ulysses attention) on 2 GPUs against one rank,
#                  the tiny Wan forward + backward; skipped, saying why, on a box with one GPU (NCCL takes one
#                  rank per GPU and diffusers refuses a context degree of 1)
# Files under DIR (default $OUT, else out/gpu-suite): suite.log, results.jsonl (one record per
# part, appended as it ends), summary.json and summary.md (printed at the end). At most 4 files:
# the device returns at most 8.
#
# --dry-run: the same scripts and code paths on CPU with tiny models (about 3 minutes on 2 busy cores),
# with the project venv's python ($PYTHON, else .venv/bin/python, else python3), no wheels
# installed, and every module the box lacks and .whl/ does not ship refused at import
# (box_site/sitecustomize.py), so a new import breaks the dry run here and not the GPU run there.
# It adds one part, step_meta: the real 5B student built on the meta device.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

DRY=0
OUTDIR=${OUT:-out/gpu-suite}
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUTDIR=$2; shift ;;
    --only) ONLY=$2; shift ;;
    *) echo "gpu_suite.sh: unknown argument $1 (use --dry-run, --out DIR, --only part,part)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/suite.log
rm -f "$OUTDIR"/results.jsonl "$OUTDIR"/summary.json "$OUTDIR"/summary.md "$LOG"
WORK=$(mktemp -d /tmp/gpu-suite.XXXXXX)  # per-part JSON and output; never under $OUT (file count)
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1

# Top-level modules the GPU box lacks (the lead's list for the lent machines). In a dry run those
# not shipped in .whl/ (tests/benchmarks/gpu_wheels.txt) are refused at import.
BOX_ABSENT="diffusers sam2 hydra omegaconf antlr4 iopath portalocker zarr numcodecs donfig google_crc32c crc32c webdataset braceexpand av ray xformers torchao"
SHIPPED=$(grep -vE '^\s*(#|$)' tests/benchmarks/gpu_wheels.txt | awk '{print $2}')

if [ $DRY = 1 ]; then
  PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  export GPU_SUITE_ABSENT=$(for m in $BOX_ABSENT; do grep -qx "$m" <<<"$SHIPPED" || echo "$m"; done | paste -sd, -)
  export PYTHONPATH=$REPO/tests/benchmarks/box_site:$REPO
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  echo "[gpu_suite] dry run: $PY, refusing imports of: $GPU_SUITE_ABSENT" | tee -a "$LOG"
else
  PY=${PYTHON:-python3}
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "[gpu_suite] no .whl/*.whl here: run \`make gpu-wheels\` on the dev box and carry .whl" | tee -a "$LOG"
  else
    t0=$(date +%s)
    rm -rf /tmp/site  # pip --target skips packages already there (a warm box keeps /tmp)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
    echo "[gpu_suite] installed $(ls .whl/*.whl | wc -l) wheels into /tmp/site in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  fi
  export PYTHONPATH=/tmp/site:$REPO/.whl/src:$REPO
fi

SUMMARY="$PY tests/benchmarks/gpu_suite_summary.py"
{ echo "[gpu_suite] $(date -u +%FT%TZ) host $(hostname) nproc $(nproc)"; nvidia-smi 2>&1 | head -15 || true; } | tee -a "$LOG"
$SUMMARY facts --out "$OUTDIR" 2>&1 | tee -a "$LOG"

B=tests/benchmarks
if [ $DRY = 1 ]; then
  PARTS="teacher teacher_compiled teacher_cast teacher_loop encodings extract_inproc eval_sampling step step_compile step_fp8 step_selective step_xformers fsdp fsdp_full wan_step wan14b_fsdp context step_meta"
  T=(--threads 1)
  declare -A CMD=(
    [teacher]="$B/bench_tracker.py --device cpu --model tiny --frames 5 --clips 2 --height 48 --width 64 --clip-batch 1,2 ${T[*]}"
    # backend eager: dynamo's capture (guards, recompiles) of the two teacher modules without code generation
    [teacher_compiled]="$B/bench_tracker.py --device cpu --model tiny --frames 2 --clips 1 --height 32 --width 32 --clip-batch 1 --no-stock --compile --compile-backend eager ${T[*]}"
    # CPU computes in float32: the cast copy stays float32 (the producer's rule), so its figures check the plumbing only
    [teacher_cast]="$B/bench_tracker.py --device cpu --model tiny --frames 5 --clips 2 --height 48 --width 64 --clip-batch 2 --image-batch 2,4 --no-stock --cast-weights ${T[*]}"
    [teacher_loop]="$B/bench_tracker.py --device cpu --model tiny --frames 2 --clips 1 --height 32 --width 32 --clip-batch 1 --no-stock --compile --compile-loop --compile-backend eager ${T[*]}"
    [encodings]="$B/bench_encodings.py --device cpu --tiling both --clips 1 --frames 9"
    [eval_sampling]="$B/bench_sampling.py --device cpu --frames 9 --steps 1,4 ${T[*]}"
    [extract_inproc]="$B/bench_extract.py --device cpu --clips 2 --repeats 1 --render 64x96 --frames 9 --threads 1"
    [step]="$B/bench_step.py --synthetic --preset tiny --warmup 1 --gpu-steps 2 ${T[*]}"
    # aot_eager: the compile path (dynamo, AOT autograd, the tap and checkpointing around compiled blocks) without
    # inductor's C++ code generation, which alone takes over a minute on 2 cores; fp8 is refused on CPU (its reason)
    [step_compile]="$B/bench_step.py --synthetic --preset tiny --compile --compile-backend aot_eager --warmup 1 --gpu-steps 2 ${T[*]}"
    [step_fp8]="$B/bench_step.py --synthetic --preset tiny --compile --compile-backend aot_eager --fp8 --warmup 1 --gpu-steps 2 ${T[*]}"
    # 1 GiB: the tiny student's plan fits without checkpointing, so auto resolves to none (compared with all)
    [step_selective]="$B/bench_step.py --synthetic --preset tiny --checkpointing auto,all --gpu-memory-gb 1 --warmup 1 --gpu-steps 2 ${T[*]}"
    [step_xformers]="$B/bench_step.py --synthetic --preset tiny --attention xformers --warmup 1 --gpu-steps 2 ${T[*]}"
    [fsdp]="$B/bench_step.py --synthetic --preset tiny --strategy fsdp --warmup 1 --gpu-steps 2 ${T[*]}"
    [fsdp_full]="$B/bench_step.py --synthetic --preset tiny --strategy fsdp --full-finetune --warmup 1 --gpu-steps 2 ${T[*]}"
    # the Wan parts' code paths with the tiny Wan (3 blocks, 3x8x12 tokens)
    [wan_step]="$B/bench_step.py --synthetic --preset wan-tiny --warmup 1 --gpu-steps 2 ${T[*]}"
    [wan14b_fsdp]="$B/bench_step.py --synthetic --preset wan-tiny --strategy fsdp --warmup 1 --gpu-steps 2 ${T[*]}"
    [context]="$B/bench_context.py --device cpu --nproc 2"
    [step_meta]="$B/bench_step.py --real --dry-run"
  )
  declare -A BUDGET=([teacher]=90 [teacher_compiled]=60 [teacher_cast]=60 [teacher_loop]=60 [encodings]=90 [extract_inproc]=60 [eval_sampling]=60 [step]=90 [step_compile]=90 [step_fp8]=60 [step_selective]=60 [step_xformers]=60 [fsdp]=90 [fsdp_full]=90 [wan_step]=60 [wan14b_fsdp]=60 [context]=90 [step_meta]=90)
else
  # the compile parts come last: a command cut at the device's limit loses only them
  PARTS="teacher encodings step step_xformers fsdp fsdp_full context step_selective wan_step wan14b_fsdp extract_inproc eval_sampling teacher_cast teacher_compiled teacher_loop step_compile step_fp8"
  declare -A CMD=(
    [teacher]="$B/bench_tracker.py --device cuda --model sam2.1_hiera_l --image-size 1024 --frames 49 --clips 8 --clip-batch 1,4,8"
    [encodings]="$B/bench_encodings.py --device cuda --tiling both --clips 2"
    [eval_sampling]="$B/bench_sampling.py --device cuda"
    [extract_inproc]="$B/bench_extract.py --device cuda --real-size --clips 8 --repeats 1"
    [teacher_compiled]="$B/bench_tracker.py --device cuda --model sam2.1_hiera_l --image-size 1024 --frames 49 --clips 8 --clip-batch 8 --no-stock --compile"
    [teacher_cast]="$B/bench_tracker.py --device cuda --model sam2.1_hiera_l --image-size 1024 --frames 49 --clips 8 --clip-batch 8 --image-batch 8,16 --no-stock --cast-weights"
    [teacher_loop]="$B/bench_tracker.py --device cuda --model sam2.1_hiera_l --image-size 1024 --frames 49 --clips 8 --clip-batch 8 --no-stock --compile --compile-loop"
    [step]="$B/bench_step.py --device cuda --real --warmup 1 --gpu-steps 2"
    [step_xformers]="$B/bench_step.py --device cuda --real --attention xformers --warmup 1 --gpu-steps 2"
    [step_selective]="$B/bench_step.py --device cuda --real --checkpointing auto,all --gpu-memory-gb 80 --warmup 1 --gpu-steps 2"
    [fsdp]="$B/bench_step.py --device cuda --real --strategy fsdp --warmup 1 --gpu-steps 2"
    [fsdp_full]="$B/bench_step.py --device cuda --real --strategy fsdp --full-finetune --warmup 1 --gpu-steps 2"
    [context]="$B/bench_context.py --device cuda --nproc 2"
    [wan_step]="$B/bench_step.py --device cuda --preset wan-1.3b --warmup 1 --gpu-steps 2"
    [wan14b_fsdp]="$B/bench_step.py --device cuda --preset wan-14b --strategy fsdp --warmup 1 --gpu-steps 2"
    [step_compile]="$B/bench_step.py --device cuda --real --compile --warmup 1 --gpu-steps 2"
    [step_fp8]="$B/bench_step.py --device cuda --real --compile --fp8 --warmup 1 --gpu-steps 2"
  )
  # seconds per part (timeout limits, not measurements: only the first seven's were ever timed). The sum is about
  # 2,850 s: on the device's 600 s per command (install and facts take about 40 s) run these as separate commands,
  #   1. --only teacher,encodings,step,step_xformers,fsdp,fsdp_full,context   560 s
  #   2. --only step,step_compile,step_fp8                                     410 s  (step: the eager reference)
  #   3. --only step_selective,wan_step,wan14b_fsdp                            510 s
  #   4. --only teacher_compiled,extract_inproc                                480 s
  #   5. --only eval_sampling                                                   300 s
  #   6. --only teacher_cast,teacher_loop                                      450 s  (compare with 1's teacher, 4's teacher_compiled)
  # step_xformers takes seconds when xformers is absent (the lent boxes), context too on a one-GPU box. Unknowns:
  # step_compile/step_fp8 one block's inductor compile (fwd + bwd); teacher_compiled Hiera-L's inductor compile and
  # memory attention's recompiles (the CPU dry run shows recompiles after the warm-up: guards on strides/storage
  # offsets of its inputs and on the position-encoding cache); wan14b_fsdp building 14 B fp32 parameters on the GPU
  # (57 GB, then cast); eval_sampling the untiled VAE decode of 49x480x720 (three samples). step_fp8 imports torchao from .whl/ (gpu_wheels.txt).
  declare -A BUDGET=([teacher]=150 [encodings]=80 [step]=110 [step_xformers]=20 [fsdp]=70 [fsdp_full]=90 [context]=40
                     [step_compile]=150 [step_fp8]=150 [step_selective]=150 [wan_step]=120 [wan14b_fsdp]=240
                     [teacher_compiled]=300 [extract_inproc]=180 [eval_sampling]=300 [teacher_cast]=150 [teacher_loop]=300)
fi
[ -n "$ONLY" ] && PARTS=$(tr , ' ' <<<"$ONLY")

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { printf '%d.%03d' $(( $1 / 1000 )) $(( $1 % 1000 )); }  # milliseconds -> "s.mmm" (no bc on the box)

run_part() {  # run_part NAME BUDGET CMD...: one timed part; its JSON and output go to $WORK
  local name=$1 budget=$2; shift 2
  local json=$WORK/$name.json out=$WORK/$name.out
  rm -f "$json"
  echo "[gpu_suite] part $name (budget $budget s): $PY $* --json \$WORK/$name.json" | tee -a "$LOG"
  local t0=$(now_ms)
  timeout -k 10 "$budget" $PY "$@" --json "$json" > "$out" 2>&1
  PART_RC=$? PART_MS=$(( $(now_ms) - t0 ))
  cat "$out" >> "$LOG"
}

for part in $PARTS; do
  [ -n "${CMD[$part]:-}" ] || { echo "[gpu_suite] unknown part $part" | tee -a "$LOG"; continue; }
  read -r -a argv <<<"${CMD[$part]}"
  budget=${BUDGET[$part]}
  run_part "$part" "$budget" "${argv[@]}"
  note=""
  $SUMMARY record --out "$OUTDIR" --part "$part" --rc "$PART_RC" --seconds "$(secs $PART_MS)" --budget "$budget" \
    --command "$PY ${CMD[$part]}" --json "$WORK/$part.json" --output "$WORK/$part.out" --note "$note" 2>&1 | tee -a "$LOG"
done

$SUMMARY summarise --out "$OUTDIR" --parts "$(tr ' ' , <<<"$PARTS")" --mode "$([ $DRY = 1 ] && echo dry-run || echo gpu)" 2>&1 | tee -a "$LOG"
rm -rf "$WORK"
