#!/usr/bin/env python3
"""bench/make_fp8.py writes fp8 files that are right and that Kiln renders from.

    test_make_fp8.py KILN SOURCE_DIR WORK_DIR MODELS_DIR

Needs numpy (make_fp8.py does): run by a Python without it, the test runs
itself again with $KN_BENCH_PYTHON or /usr/bin/python3, else is skipped (77).
- The conversion: e4m3fn_exact against the nearest of the 256 codes (ties to
  the even code, saturation at 448) on edge values (subnormals, midpoints,
  the largest finite value) and random ones over the whole range; the table
  make_fp8.py converts with against e4m3fn_exact; no code is NaN.
- The files: manifests made from the tiny Qwen-Image DiT's and Qwen2.5-VL's
  headers (MODELS_DIR, the build's tiny set: the real names) go through
  make_fp8.py, the DiT at 1 block as e4m3fn, the text encoder whole as scaled
  fp8. Every tensor has the dtype and shape the layout gives it; the scaled
  file has the scaled_fp8 marker and an F32 scale per fp8 weight; decoded
  values (times the scale) are the fp8 rounding of make_fp8.py's own fp32
  values, within 1/16 relative of them where they are normal.
- Kiln renders workflows/qwen_image_t2i at 64x64 from a models folder of
  links to them (and the tiny VAE): a plausible image.
"""
import json
import os
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    for py in (os.environ.get("KN_BENCH_PYTHON"), "/usr/bin/python3"):
        if py and os.path.exists(py) and os.path.realpath(py) != os.path.realpath(sys.executable) and \
                subprocess.run([py, "-c", "import numpy"], capture_output=True).returncode == 0:
            os.execv(py, [py] + sys.argv)
    print("skipped: no Python with numpy (set KN_BENCH_PYTHON)")
    sys.exit(77)

from kiln_e2e import Checks, read_header, render, render_pixels

KILN, SRC, WORK, MODELS = sys.argv[1:5]
sys.path.insert(0, os.path.join(SRC, "bench"))
import make_fp8  # noqa: E402

check = Checks()
os.makedirs(WORK, exist_ok=True)

# ---- the conversion -------------------------------------------------------------
values = make_fp8.e4m3fn_values()
finite = values[:127].astype(np.float64)  # codes 0..126: 0 and the positive values, ascending


def nearest(x):
    a = min(abs(float(x)), 448.0)
    d = np.abs(finite - a)
    best = np.flatnonzero(d == d.min())
    code = int(best[0]) if len(best) == 1 else int(best[best % 2 == 0][0])
    return code | (0x80 if np.signbit(x) else 0)


edges = [0.0, -0.0, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10, 2.0 ** -10 * 1.0001, 5 * 2.0 ** -10, 2.0 ** -6,
         2.0 ** -6 - 2.0 ** -10, 2.0 ** -6 - 2.0 ** -11, 1.0625, 1.03125, 1.09375, -1.09375, 7.5, 232.0, 240.0,
         248.0, 448.0, 449.0, 464.0, 465.0, 1e30, -1e30, -3.3e-3]
wide = np.random.default_rng(5).standard_normal(20000) * np.exp(np.random.default_rng(6).uniform(-14, 7, 20000))
x = np.concatenate([np.array(edges), wide]).astype(np.float32)
exact = make_fp8.e4m3fn_exact(x)
bad = [(float(v), int(c), nearest(v)) for v, c in zip(x, exact) if int(c) != nearest(v)]
check(not bad, "e4m3fn_exact is the nearest code, ties to even, saturating: %d values %s" % (len(x), bad[:5]))
check(np.array_equal(make_fp8.to_e4m3fn(x), exact), "the conversion table gives e4m3fn_exact's codes")
check(not np.any((exact & 0x7F) == 0x7F), "no value becomes NaN")
check(values[0x7E] == 448 and values[1] == 2.0 ** -9 and values[0x08] == 2.0 ** -6 and np.isnan(values[0xFF]),
      "the decoding: 0x7e is 448, 0x01 is 2^-9, 0x08 is 2^-6, 0xff NaN")


# ---- the files ------------------------------------------------------------------
def header(path):
    """(header, where the data starts)"""
    with open(path, "rb") as f:
        return read_header(f), f.tell()


def manifest(path, prefix, out):
    """shared/bench's manifest format for a file's tensors, one repeat group under prefix."""
    h, _ = header(path)
    h.pop("__metadata__", None)
    count = 1 + max(int(n[len(prefix):].split(".")[0]) for n in h if n.startswith(prefix))
    with open(out, "w") as f:
        json.dump({"component": os.path.basename(path), "stored_dtype": "BF16",
                   "repeat_groups": [{"prefix": prefix, "count": count, "reduce": True}],
                   "tensors": {n: {"shape": e["shape"], "dtype": e["dtype"]} for n, e in h.items()}}, f)
    return out, h


def make(man, out, layout, *args):
    p = subprocess.run([sys.executable, os.path.join(SRC, "bench", "make_fp8.py"), man, out, "--layout", layout,
                        "--seed", "7"] + list(args), capture_output=True, text=True)
    check(p.returncode == 0, "make_fp8.py --layout %s %s %s" % (layout, " ".join(args), p.stderr[-500:]))
    return out


def tensor(path, h, data_at, name):
    e = h[name]
    a, b = e["data_offsets"]
    raw = np.fromfile(path, np.uint8, b - a, offset=data_at + a)
    return raw.view({"F8_E4M3": np.uint8, "F32": np.float32, "BF16": np.uint16}[e["dtype"]])


def check_values(path, h, data_at, name, shape, scale):
    """The stored codes of `name` are the rounding of make_fp8.py's values / scale."""
    src = np.concatenate(list(make_fp8.draw(name, shape, 7)))
    codes = tensor(path, h, data_at, name)
    same = np.array_equal(codes, make_fp8.to_e4m3fn(src / np.float32(scale)))
    got = values[codes] * np.float32(scale)
    normal = np.abs(src / scale) >= 2.0 ** -6
    rel = np.max(np.abs(got[normal] - src[normal]) / np.abs(src[normal])) if normal.any() else 0.0
    check(same and rel <= 1 / 16, "%s: decoded x %.3g is the rounding of the source (normals within %.4f)" %
          (name, scale, rel))


dit_src = os.path.join(MODELS, "diffusion_models", "qwen_image_fp8_e4m3fn.safetensors")
te_src = os.path.join(MODELS, "text_encoders", "qwen_2.5_vl_7b_fp8_scaled.safetensors")
dit_man, dit_h = manifest(dit_src, "transformer_blocks.", os.path.join(WORK, "dit.json"))
te_man, te_h = manifest(te_src, "model.layers.", os.path.join(WORK, "te.json"))
dit = make(dit_man, os.path.join(WORK, "dit_fp8.safetensors"), "e4m3fn", "--blocks", "1")
te = make(te_man, os.path.join(WORK, "te_fp8_scaled.safetensors"), "scaled")
if check.failures:
    check.exit()

h, at = header(dit)
meta = h.pop("__metadata__")
want = {n for n in dit_h if not n.startswith("transformer_blocks.") or n.startswith("transformer_blocks.0.")}
check(set(h) == want and all(e["dtype"] == "F8_E4M3" and e["shape"] == dit_h[n]["shape"] for n, e in h.items()),
      "DiT: block 0 and the rest, every tensor F8_E4M3 in its shape (%d tensors, %s)" % (len(h), meta["layout"]))
for n in ("img_in.weight", "transformer_blocks.0.img_mod.1.weight", "transformer_blocks.0.attn.to_q.bias",
          "transformer_blocks.0.attn.norm_q.weight"):
    check_values(dit, h, at, n, dit_h[n]["shape"], 1.0)

h, at = header(te)
h.pop("__metadata__")
fp8 = {n for n in te_h if n.startswith("model.layers.") and n.endswith(".weight") and len(te_h[n]["shape"]) == 2}
scales = {n[:-len("weight")] + "scale_weight" for n in fp8}
check(set(h) == set(te_h) | scales | {"scaled_fp8"}, "text encoder: every tensor, a scale_weight per fp8 weight, "
      "the scaled_fp8 marker (%d fp8 weights)" % len(fp8))
check(h["scaled_fp8"]["dtype"] == "F8_E4M3" and h["scaled_fp8"]["shape"] == [0], "the marker: F8_E4M3 [0]")
check(all(h[n]["dtype"] == ("F8_E4M3" if n in fp8 else "BF16") for n in te_h) and
      all(h[s]["dtype"] == "F32" and h[s]["shape"] == [] for s in scales),
      "layer linears F8_E4M3 with F32 [] scales; embeddings, norms, biases BF16")
for n in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"):
    s = float(tensor(te, h, at, n[:-len("weight")] + "scale_weight")[0])
    src = np.concatenate(list(make_fp8.draw(n, te_h[n]["shape"], 7)))
    check(s == np.float32(np.max(np.abs(src)) / np.float32(448.0)), "%s: scale is max|w| / 448" % n)
    check_values(te, h, at, n, te_h[n]["shape"], s)
emb = tensor(te, h, at, "model.embed_tokens.weight")
src = np.concatenate(list(make_fp8.draw("model.embed_tokens.weight", te_h["model.embed_tokens.weight"]["shape"], 7)))
check(np.array_equal(emb, make_fp8.to_bf16(src)), "embed_tokens: the source rounded to BF16")

# ---- Kiln renders from them --------------------------------------------------------
models = os.path.join(WORK, "models")
for sub, name, target in [("diffusion_models", "qwen_image_fp8_e4m3fn.safetensors", dit),
                          ("text_encoders", "qwen_2.5_vl_7b_fp8_scaled.safetensors", te),
                          ("vae", "qwen_image_vae.safetensors", os.path.join(MODELS, "vae", "qwen_image_vae.safetensors"))]:
    os.makedirs(os.path.join(models, sub), exist_ok=True)
    link = os.path.join(models, sub, name)
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.realpath(target), link)
api = json.load(open(os.path.join(SRC, "workflows", "qwen_image_t2i.api.json")))
for n in api.values():
    if n["class_type"] == "EmptySD3LatentImage":
        n["inputs"].update(width=64, height=64)
    if n["class_type"] == "KSampler":
        n["inputs"]["steps"] = 2
prompt = os.path.join(WORK, "t2i.json")
with open(prompt, "w") as f:
    json.dump(api, f)
png = render(check, KILN, WORK, [prompt], "out", ["--models", models])[0]
render_pixels(check, png, "fp8 DiT + scaled fp8 text encoder")
check.exit()
