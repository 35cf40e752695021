#!/bin/sh
# Full-size Qwen-Image stored fp8 on this machine, in one run (bench/README.md):
#   bench/fullsize.sh [SIZE [STEPS]]      SIZE default 1024, STEPS default 2
# Writes once into $KN_BENCH_DIR the files ComfyUI users load: the DiT as
# qwen_image_fp8_e4m3fn (bench/make_fp8.py --layout e4m3fn, 60 blocks: 20.4 GB),
# Qwen2.5-VL-7B as qwen_2.5_vl_7b_fp8_scaled (--layout scaled, 28 layers and
# lm_head: 8.7 GB) and the Wan 2.1 VAE (make_model.py, bf16), links them under
# those names in a models folder, renders workflows/qwen_image_t2i at SIZE x SIZE
# with `kiln run --json --timings` (bench/fullsize.py), and prints the seconds
# per DiT step, of the text encodes, of the VAE decode, per node the peaks of
# the process's anonymous and file-backed RSS, its peak RSS, the machine's
# memory and CPU.
# Env: KN_FULLSIZE_BLOCKS (DiT blocks, default 60), KN_FULLSIZE_LAYERS (text
# encoder layers, default 28; reduced files leave lm_head out), KN_FULLSIZE_CFG
# (default the workflow's 2.5: [uncond, cond] in one forward; 1: cond alone), and
# those of bench/models.sh.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/models.sh"
size=${1:-1024}
steps=${2:-2}
blocks=${KN_FULLSIZE_BLOCKS:-60}
layers=${KN_FULLSIZE_LAYERS:-28}

# What the files not yet written need, in MB (per block / layer and fixed, from the manifests).
need=0
dit_name=qwen_image_fp8_$blocks te_name=qwen25_vl_fp8_scaled_$layers
[ -f "$dir/$dit_name.safetensors" ] || need=$((need + 41 + 340 * blocks))
if [ ! -f "$dir/$te_name.safetensors" ]; then
    need=$((need + 1090 + 233 * layers))
    [ "$layers" != 28 ] || need=$((need + 1090)) # lm_head, in the real file too
fi
[ -f "$dir/wan21_vae.safetensors" ] || need=$((need + 254))
mkdir -p "$dir"
free_mb=$(df -Pm "$dir" | awk 'NR == 2 {print $4}')
if [ "$need" -gt 0 ]; then
    echo "writing $need MB of model files to $dir ($free_mb MB free there)"
    if [ "$free_mb" -lt $((need + 1024)) ]; then
        echo "not enough disk: $dir needs $need MB and 1 GB to spare, has $free_mb MB free;" \
            "set KN_BENCH_DIR to a disk with room" >&2
        exit 1
    fi
fi

build_targets kiln
[ "$blocks" = 60 ] && dit_blocks=all || dit_blocks=$blocks
[ "$layers" = 28 ] && te_layers=all || te_layers=$layers
writer="$root/bench/make_fp8.py"
dit=$(make "$dit_name" qwen_image_dit "$dit_blocks" --layout e4m3fn)
te=$(make "$te_name" qwen25_vl_7b_text "$te_layers" --layout scaled)
unset writer
vae=$(make wan21_vae wan21_vae all --dtype bf16)

work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-fullsize.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/models/diffusion_models" "$work/models/text_encoders" "$work/models/vae"
ln -s "$dit" "$work/models/diffusion_models/qwen_image_fp8_e4m3fn.safetensors"
ln -s "$te" "$work/models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors"
ln -s "$vae" "$work/models/vae/qwen_image_vae.safetensors"

gib() { awk -v k="$1" 'BEGIN {printf "%.2f", k / 1048576}'; }
mem() { awk -v k="$1" '$1 == k ":" {print $2}' /proc/meminfo; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) threads;" \
    "flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o 'avx512[a-z_0-9]*\|avx2\|fma' | sort -u | tr '\n' ' ')"
echo "memory: $(gib "$(mem MemTotal)") GiB total, $(gib "$(mem MemAvailable)") GiB available;" \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "files: DiT $blocks blocks, text encoder $layers layers"
for f in "$dit" "$te" "$vae"; do
    echo "  $(basename "$f"): $(gib $(($(stat -Lc %s "$f") / 1024))) GiB"
done
"$python" "$root/bench/fullsize.py" --kiln "$build/kiln" --models "$work/models" \
    --workflow "$root/workflows/qwen_image_t2i.api.json" --size "$size" --steps "$steps" ${KN_FULLSIZE_CFG:+--cfg "$KN_FULLSIZE_CFG"}
