# Sourced by the bench scripts: where things are, and the random-weight files
# they share. Needs $root (the checkout); sets build, dir, python, shared.
# Env: KN_BENCH_DIR (default /tmp/kiln-bench), KN_BENCH_PYTHON (a python3 with
# numpy, default /usr/bin/python3), KN_SHARED (default: shared/ beside the checkout).
build="$root/build-bench"
dir=${KN_BENCH_DIR:-/tmp/kiln-bench}
python=${KN_BENCH_PYTHON:-/usr/bin/python3}
shared=${KN_SHARED:-$root/../shared}

# build_targets TARGET...: configures $build (CPU only) and builds the targets there
build_targets() {
    cmake -S "$root" -B "$build" -DKN_CUDA=OFF >/dev/null
    cmake --build "$build" --target "$@" -j2 >/dev/null
}

# make NAME MANIFEST BLOCKS [ARGS]: prints $dir/NAME.safetensors, written
# once from shared/bench's manifest (BLOCKS as make_model.py's --blocks, or all)
# by make_model.py (ARGS e.g. --dtype bf16), or by $writer when set (a script
# with make_model.py's arguments: bench/make_fp8.py, ARGS --layout L)
make() {
    name=$1 manifest=$2 blocks=$3
    shift 3
    out="$dir/$name.safetensors"
    mkdir -p "$dir"
    if [ ! -f "$out" ]; then
        echo "writing $out ..." >&2
        if [ "$blocks" = all ]; then
            "$python" "${writer:-$shared/bench/make_model.py}" "$shared/bench/manifests/$manifest.json" "$out.tmp" --seed 1 "$@" >/dev/null
        else
            "$python" "${writer:-$shared/bench/make_model.py}" "$shared/bench/manifests/$manifest.json" "$out.tmp" \
                --blocks "$blocks" --seed 1 --drop-unused "$@" >/dev/null
        fi
        mv "$out.tmp" "$out"
    fi
    echo "$out"
}
