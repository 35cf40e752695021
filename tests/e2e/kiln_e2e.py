"""Helpers shared by the end-to-end tests, standard library only (the Python
ctest finds may have no numpy).

- Checks: "ok"/"FAIL" lines and a failure count.
- run_kiln: `kiln run --json ...` with its events parsed and crashes caught;
  render: several prompts in one `kiln run`, their PNG paths; edited: a copy
  of an API prompt with one node's inputs changed.
- check_bundled: the checks every bundled text-to-image workflow pair gets
  (workflows/<name>.api.json and .ui.json) on a tiny model set.
- safetensors: read_header, read_safetensors (F32, F16, BF16, U8, I64 and
  the other integer types) and write_safetensors (F32).
- PNG: png_chunks, png_texts, png_pixels (8-bit, non-interlaced, every
  filter type undone), pixel_problems (the artefacts a broken pipeline
  leaves: a constant channel, most pixels stuck at black or white),
  render_pixels (decode + that check), changed_fraction and image_data (the
  chunks that hold the image, to compare renders whose text chunks differ).
"""
import array
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib


class Checks:
    def __init__(self):
        self.failures = []

    def __call__(self, cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            self.failures.append(what)
        return cond

    def exit(self):
        print("%d failure(s)" % len(self.failures))
        sys.exit(1 if self.failures else 0)


def run_kiln(check, kiln, args, cwd, json_mode=True, timeout=600):
    """Runs `kiln run [--json] ARGS`; returns (exit status, events, stderr).
    Lines that are not JSON become {"type": "text", "data": line}."""
    p = subprocess.run([kiln, "run"] + (["--json"] if json_mode else []) + list(args), cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
    events = []
    for line in p.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"type": "text", "data": line})
    crashed = p.returncode not in (0, 1) or "Sanitizer" in p.stderr or "runtime error:" in p.stderr
    check(not crashed, "no crash or sanitizer report: kiln run %s" % " ".join(args))
    if crashed:
        print(p.stderr[-4000:])
    return p.returncode, events, p.stderr


def of_type(events, kind):
    return [e["data"] for e in events if e.get("type") == kind]


def render(check, kiln, work, files, output, args=(), log=None):
    """Runs the prompt files in one `kiln run` (shared models and cache) with
    --output WORK/OUTPUT and further args; returns each prompt's PNG path
    (exits with the failures when one does not render). The run's stderr is
    appended to the list `log` when one is given."""
    out = os.path.join(work, output)
    rc, ev, err = run_kiln(check, kiln, ["--output", out] + list(args) + list(files), work)
    if log is not None:
        log.append(err)
    done = of_type(ev, "execution_success")
    check(rc == 0 and len(done) == len(files), "%s: %d prompts render (exit %d) %s" %
          (output, len(files), rc, err.strip()[-300:] if rc else ""))
    if len(done) != len(files):
        check.exit()
    paths = []
    for d in done:
        (image,) = [o["images"][0] for o in d["outputs"].values()]
        paths.append(os.path.join(out, image["subfolder"], image["filename"]))
    return paths


def edited(prompt, class_type, inputs):
    """A copy of an API prompt with inputs set on its one node of class_type."""
    p = json.loads(json.dumps(prompt))
    (node,) = [n for n in p.values() if n["class_type"] == class_type]
    node["inputs"].update(inputs)
    return p


# ---- safetensors --------------------------------------------------------------------

# dtype -> array typecode; F16 and BF16 are widened by hand.
_TYPECODES = {"F32": "f", "F64": "d", "U8": "B", "I8": "b", "I16": "h", "I32": "i", "I64": "q", "BOOL": "B"}
_SIZES = {"F16": 2, "BF16": 2}


class Tensor:
    def __init__(self, dtype, shape, values):
        self.dtype, self.shape, self.values = dtype, shape, values


def _decode(dtype, raw):
    if dtype in _TYPECODES:
        a = array.array(_TYPECODES[dtype])
        a.frombytes(raw)
        if sys.byteorder != "little":
            a.byteswap()
        return list(a)
    if dtype == "F16":
        return [v[0] for v in struct.iter_unpack("<e", raw)]
    if dtype == "BF16":  # the high half of a float32
        return [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    raise ValueError("unsupported safetensors dtype " + dtype)


def read_header(f):
    """The JSON header of an open safetensors file (left positioned at the data)."""
    n = struct.unpack("<Q", f.read(8))[0]
    return json.loads(f.read(n))


def read_safetensors(path):
    """Returns ({name: Tensor}, metadata dict) of a safetensors file."""
    with open(path, "rb") as f:
        header = read_header(f)
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, h in header.items():
        begin, end = h["data_offsets"]
        tensors[name] = Tensor(h["dtype"], h["shape"], _decode(h["dtype"], data[begin:end]))
    return tensors, meta


def write_safetensors(path, tensors):
    """tensors: name -> (shape, list of floats), stored F32."""
    header, blobs, off = {}, [], 0
    for name, (shape, vals) in tensors.items():
        blob = struct.pack("<%df" % len(vals), *vals)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ---- PNG ------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data):
    """[(type, payload)] of a PNG's bytes."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG")
    chunks, i = [], 8
    while i + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        chunks.append((kind, data[i + 8:i + 8 + n]))
        i += 12 + n
    return chunks


def png_texts(path):
    """The tEXt chunks of a PNG file as {key: value}."""
    with open(path, "rb") as f:
        chunks = png_chunks(f.read())
    texts = {}
    for kind, payload in chunks:
        if kind == b"tEXt":
            k, v = payload.split(b"\0", 1)
            texts[k.decode("latin-1")] = v.decode("latin-1")
    return texts


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def png_pixels(path):
    """(width, height, channels, pixel bytes row-major) of an 8-bit, non-interlaced PNG."""
    with open(path, "rb") as f:
        chunks = png_chunks(f.read())
    ihdr = next(p for k, p in chunks if k == b"IHDR")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or not channels or interlace:
        raise ValueError("%s: only 8-bit non-interlaced gray/RGB(A) PNGs are decoded here" % path)
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    stride, bpp = width * channels, channels
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = row[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            pred = (0, a, b, (a + b) >> 1, _paeth(a, b, c))[kind]
            row[x] = (row[x] + pred) & 0xFF
        out += row
        prev = row
    return width, height, channels, bytes(out)


def pixel_problems(channels, px):
    """What makes an image implausible as a render: [] when none. A NaN or
    infinity through the pipeline leaves flat planes or pixels stuck at black
    or white (the clamp to 0..1)."""
    if not px:
        return ["no pixels"]
    problems = ["channel %d is constant (%d)" % (ch, px[ch]) for ch in range(channels)
                if min(px[ch::channels]) == max(px[ch::channels])]
    pixels = [px[i:i + channels] for i in range(0, len(px), channels)]
    extreme = sum(1 for p in pixels if p == bytes(channels) or p == b"\xff" * channels)
    if extreme * 2 > len(pixels):
        problems.append("%d of %d pixels are pure black or white" % (extreme, len(pixels)))
    return problems


def render_pixels(check, path, what):
    """The decoded pixels of a render, checked for a broken pipeline's artefacts."""
    w, h, c, px = png_pixels(path)
    problems = pixel_problems(c, px)
    check(not problems, "%s: plausible %dx%d render %s" % (what, w, h, problems or ""))
    return px


def image_data(path):
    """The IHDR and IDAT chunks of a PNG file: equal for equal images whatever the text chunks."""
    with open(path, "rb") as f:
        return [c for c in png_chunks(f.read()) if c[0] in (b"IHDR", b"IDAT")]


def changed_fraction(a, b):
    """The fraction of the byte values that differ between two renders of one size."""
    return sum(1 for x, y in zip(a, b) if x != y) / max(len(a), 1)


# ---- bundled workflows ----------------------------------------------------------------

def check_bundled(check, kiln, src, work, variants, size=256):
    """For each bundled workflow name -> [(variant, class_type, inputs, "other" | "same")]
    (workflows/<name>.{api,ui}.json rendered with `kiln run` on its default models):
    - the API file renders a plausible size x size PNG whose "prompt" chunk is the prompt;
    - each variant (the prompt with inputs set on its one node of class_type) moves
      most pixel values ("other") or none ("same");
    - the same prompt in another process writes the same bytes;
    - the UI file converts to its API twin and renders the same image data, its PNG
      carrying the UI graph as "workflow".
    WORK is emptied first. Returns name -> the API file's PNG path."""
    def workflow(name, fmt):
        return os.path.join(src, "workflows", "%s.%s.json" % (name, fmt))

    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    apis = {name: json.load(open(workflow(name, "api"))) for name in variants}

    # 1. each API file and its variants, all in one process
    files, labels = [], []
    for name, edits in variants.items():
        files.append(workflow(name, "api"))
        labels.append((name, None))
        for i, (_, class_type, inputs, _) in enumerate(edits):
            path = os.path.join(work, "%s_%d.json" % (name, i))
            with open(path, "w") as f:
                json.dump(edited(apis[name], class_type, inputs), f)
            files.append(path)
            labels.append((name, i))
    pngs = dict(zip(labels, render(check, kiln, work, files, "output")))
    for name, edits in variants.items():
        png = pngs[(name, None)]
        base = render_pixels(check, png, name)
        check(len(base) == size * size * 3, "%s: %dx%d RGB" % (name, size, size))
        check(json.loads(png_texts(png).get("prompt", "null")) == apis[name], "%s: 'prompt' chunk is the prompt" % name)
        for i, (what, _, _, effect) in enumerate(edits):
            px = render_pixels(check, pngs[(name, i)], "%s, %s" % (name, what))
            changed = changed_fraction(base, px)
            if effect == "same":
                check(px == base, "%s, %s: the same pixels" % (name, what))
            else:  # random tiny weights: a change that reaches the DiT moves nearly every value
                check(changed > 0.5, "%s, %s: %.0f%% of the pixel values change" % (name, what, 100 * changed))

    # 2. the same API prompts in a new process: the same files byte for byte
    again = render(check, kiln, work, [workflow(name, "api") for name in variants], "again")
    for name, png in zip(variants, again):
        with open(pngs[(name, None)], "rb") as a, open(png, "rb") as b:
            check(a.read() == b.read(), "%s: same prompt, another process: the same PNG byte for byte" % name)

    # 3. the UI files: converted to their API twins, rendered to the same pixels
    for name in variants:
        p = subprocess.run([kiln, "convert", "--compact", workflow(name, "ui")], capture_output=True, text=True,
                           timeout=60)
        check(p.returncode == 0 and json.loads(p.stdout or "null") == apis[name],
              "kiln convert %s.ui.json gives its API twin" % name)
    ui = render(check, kiln, work, [workflow(name, "ui") for name in variants], "ui")
    for name, png in zip(variants, ui):
        texts = png_texts(png)
        check(json.loads(texts.get("workflow", "null")) == json.load(open(workflow(name, "ui"))),
              "%s.ui.json: PNG 'workflow' chunk is the UI graph" % name)
        check(json.loads(texts.get("prompt", "null")) == apis[name],
              "%s.ui.json: 'prompt' chunk is the API twin" % name)
        check(image_data(png) == image_data(pngs[(name, None)]), "%s.ui.json: the API file's image data exactly" % name)
    return {name: pngs[(name, None)] for name in variants}
