#!/bin/sh
# Sequence parallelism on this machine, in one run (bench/README.md):
#   bench/sp.sh [SIZE [BLOCKS [MODE]]]
# one step of a full-width Qwen-Image DiT of BLOCKS blocks (default 2) at
# SIZE x SIZE (default 1024), 256 text tokens: one process with one thread,
# `mpirun -np 2` with one thread each (MODE: auto, ulysses or ring), one
# process with two threads. Prints the N = 2 speedup over one thread and
# over two threads, and the bytes each rank sent per step beside the volume
# shared/notes/sequence-parallel.md §3-4 predicts (fp32 on CPUs): per attention
# layer (P-1)/P * (3 + 1) * S_loc * width * 4 bytes for Ulysses, (P-1) * 2 *
# S_loc * width * 4 for ring,
#   S_loc = ceil(text / P) + ceil(image / P), plus the output gather
#   (P-1) * ceil(image / P) * 64 * 4 bytes.
# Env: KN_BENCH_DIR, KN_BENCH_REPS, KN_BENCH_PYTHON, KN_SHARED (as families.sh).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/models.sh"
size=${1:-1024}
blocks=${2:-2}
mode=${3:-auto}
text=256
width=3072

build_targets model_bench
bench="$build/bench/model_bench"
mkdir -p "$dir"
model="$dir/qwen_image_$blocks.safetensors"
if [ ! -f "$model" ]; then
    echo "writing $model ..."
    "$python" "$shared/bench/make_model.py" "$shared/bench/manifests/qwen_image_dit.json" "$model.tmp" \
        --blocks "$blocks" --seed 1 --drop-unused --dtype bf16 >/dev/null
    mv "$model.tmp" "$model"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT

step() { # the median seconds of the run logged in $log
    sed -n 's/^dit step.*: \([0-9.]*\) s (best.*/\1/p' "$log"
}

echo "== 1 process, 1 thread"
OMP_NUM_THREADS=1 "$bench" dit "$model" "$size" "$text" | tee "$log"
t1=$(step)
echo "== mpirun -np 2, 1 thread each ($mode)"
OMP_NUM_THREADS=1 KN_BENCH_SP=$mode mpirun -np 2 --bind-to core "$bench" dit "$model" "$size" "$text" | tee "$log"
t2=$(step)
bytes=$(sed -n 's/^sequence parallel over 2 ranks: \([0-9.]*\) MB.*/\1/p' "$log")
echo "== 1 process, 2 threads"
OMP_NUM_THREADS=2 "$bench" dit "$model" "$size" "$text" | tee "$log"
tt=$(step)

awk -v t1="$t1" -v t2="$t2" -v tt="$tt" -v mb="$bytes" -v size="$size" -v text="$text" -v width="$width" \
    -v layers="$blocks" -v mode="$mode" 'BEGIN {
    P = 2; img = (size / 16) * (size / 16)
    sloc = int((text + P - 1) / P) + int((img + P - 1) / P)
    # Ulysses: q, k, v out and o back over heads; ring: K and V to every other rank
    per_layer = mode == "ring" ? (P - 1) * 2 * sloc * width * 4 : (P - 1) / P * 4 * sloc * width * 4
    model = (layers * per_layer + (P - 1) * int((img + P - 1) / P) * 64 * 4) * 1e-6
    printf "== summary (%dx%d, %d blocks)\n", size, size, layers
    printf "step: 1 process x 1 thread %.3f s, 2 processes x 1 thread %.3f s, 1 process x 2 threads %.3f s\n", t1, t2, tt
    printf "speedup of 2 processes: %.2f over 1 thread (target >= 1.7), %.2f over 1 process x 2 threads\n", t1 / t2, tt / t2
    printf "bytes per rank per step: %.3f MB sent, %.3f MB modelled (ratio %.3f)\n", mb, model, mb / model
}'
