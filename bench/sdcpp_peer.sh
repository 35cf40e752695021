#!/bin/sh
# Builds or finds the peer stable-diffusion.cpp OUTSIDE the repository, following
# shared/notes/stable-diffusion-cpp-build.md (pinned commits, regenerated vocabulary
# headers the stored snapshot lacks). Prints the path of sd-cli on its last line.
#   bench/sdcpp_peer.sh
# Env: KN_PEERS (default: peers/ beside the checkout), KN_MIRRORS (the folder of
# bare mirrors named owner+name/repo, default .mirror beside the checkout, where the
# fetch tool leaves them), KN_SDCPP_CLI (an
# sd-cli already built: used as is).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
peers=$(realpath -m "${KN_PEERS:-$root/../peers}")
mirrors=$(realpath -m "${KN_MIRRORS:-$root/../.mirror}")
sd_commit=97d2990807fe6d558e395f8764198d7c7e7b411c
ggml_commit=8e800cef2948046cc47f9db6090491c6128ca42c

if [ -n "${KN_SDCPP_CLI:-}" ]; then
    echo "$KN_SDCPP_CLI"
    exit 0
fi
src="$peers/stable-diffusion.cpp"
cli="$src/build/bin/sd-cli"
if [ -x "$cli" ]; then
    echo "$cli"
    exit 0
fi
case "$src" in "$root"/*) echo "refusing to build the peer inside the checkout: $src" >&2; exit 1 ;; esac

sdm="$mirrors/leejet+stable-diffusion.cpp/repo"
ggm="$mirrors/ggml-org+ggml/repo"
cui="$mirrors/hiddenswitch+pip-and-uv-installable-ComfyUI/repo"
for m in "$sdm" "$ggm" "$cui"; do
    [ -d "$m" ] || { echo "missing mirror $m (fetch github:leejet/stable-diffusion.cpp, ggml-org/ggml, hiddenswitch/pip-and-uv-installable-ComfyUI)" >&2; exit 1; }
done

echo "building stable-diffusion.cpp $sd_commit in $src (about 5 minutes on 2 cores)" >&2
mkdir -p "$peers"
rm -rf "$src"
git clone -q --no-checkout "$sdm" "$src"
cd "$src"
# The snapshot lacks some large blobs: check out around them, then write the two
# vocabulary headers Qwen-Image, Z-Image and Flux need, stubs for the rest.
git sparse-checkout set --no-cone '/*' '!/assets/' '!/src/tokenizers/vocab/*.hpp' '/src/tokenizers/vocab/clip_merges.hpp'
git checkout -q "$sd_commit" 2>/dev/null || true
[ "$(git rev-parse HEAD)" = "$sd_commit" ] || { echo "sd.cpp is not at $sd_commit" >&2; exit 1; }
git -c protocol.file.allow=always -c submodule.ggml.url="$ggm" submodule -q update --init ggml
[ "$(git -C ggml rev-parse HEAD)" = "$ggml_commit" ] || { echo "ggml is not at $ggml_commit" >&2; exit 1; }

v=src/tokenizers/vocab
emit() { # emit NAME < bytes > header, the layout of upstream's clip_merges.hpp
    python3 -c '
import sys
n = sys.argv[1]; b = sys.stdin.buffer.read(); o = sys.stdout
o.write("static const unsigned char %s[] = {\n" % n)
for i in range(0, len(b), 4096):
    o.write(",".join("0x%02x" % x for x in b[i:i + 4096])); o.write(",\n")
o.write("};\n")' "$1"
}
# Qwen2's merges without their "#version" line: ids are 256 + merge rank.
git -C "$cui" show HEAD:comfy/text_encoders/qwen25_tokenizer/merges.txt | tail -n +2 | emit qwen2_merges_utf8_c_str >$v/qwen_merges.hpp
git -C "$cui" show HEAD:comfy/text_encoders/t5_tokenizer/tokenizer.json | emit t5_tokenizer_json_str >$v/t5.hpp
printf '{}' | emit umt5_tokenizer_json_str >$v/umt5.hpp
for n in mistral gemma gemma2 gpt_oss; do
    printf '\n' | emit ${n}_merges_utf8_c_str >$v/${n}_merges.hpp
    printf '{}' | emit ${n}_vocab_json_utf8_c_str >$v/${n}_vocab.hpp
done

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSD_WEBP=OFF -DSD_WEBM=OFF -DSD_SERVER_BUILD_FRONTEND=OFF >/dev/null
cmake --build build --config Release -j2 --target sd-cli >/dev/null
echo "$cli"
