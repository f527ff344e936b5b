#!/usr/bin/env bash
# CUDA figures for c4s in one short run (~5 min on one H100/H200): generator
# training steps/s and sampling images/s at the real experiment's CPU size
# (48 px) and GPU size (preset default, 112 px), fp32 and bf16; matcher
# backbone training images/s (IR-18 at 64 px, IR-50 at 112 px); and the demo
# end to end on the GPU. Each step's stdout (one JSON line; the demo's summary)
# goes to OUT/NAME.out and its exit code and seconds to OUT/steps.jsonl; a step
# that fails or runs past its limit is recorded there and the next one runs.
#
#   bash benchmarks/gpu.sh [OUT]          # default OUT: c4s-out/gpu; PYTHON=... to pick the interpreter
set -u
out=${1:-c4s-out/gpu}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS CMD...: CMD's stdout -> OUT/NAME.out, its time and exit code -> OUT/steps.jsonl
    local name=$1 limit=$2 t0 rc ms
    shift 2
    echo "== $name: $*" >&2
    t0=$(date +%s%N)
    timeout "$limit" "$@" > "$out/$name.out"
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    printf '{"step": "%s", "rc": %d, "seconds": %d.%03d}\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) \
        | tee -a "$out/steps.jsonl" >&2
}

step device 30 "$py" -c '
import json, platform, torch
p = torch.cuda.get_device_properties(0)
print(json.dumps({"gpu": p.name, "memory_gb": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count,
                  "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}))'
# diffusion generator: 48 px (the CPU experiment's size) and 112 px (its GPU size), 3-branch guided sampling
for prec in no bf16; do
    step "generator_$prec" 110 "$py" "$here/bench_generator.py" --device cuda --mixed-precision "$prec" \
        --steps 40 --batch 64 --photos 32 --cases small:48,default:112 --sample-images 512 --sample-steps 20
done
# matcher backbones: the CPU experiment's IR-18 at 64 px, the GPU config's IR-50 at 112 px
step backbone_ir_18 45 "$py" "$here/bench_backbones.py" --device cuda --backbone ir_18 --batch 256 --iters 10
step backbone_ir_50 60 "$py" "$here/bench_backbones.py" --device cuda --backbone ir_50 --batch 256 --iters 10
# the main job end to end (device auto -> cuda); its report and results come back
step demo 200 "$py" -m c4s_core.cli demo --no-progress --out "$out/demo"
