#include "pipelines/tokenizers/unicode.h"

#include "pipelines/tokenizers/unicode_tables.h"

_Static_assert(KN_UC_NFC_MAX_GROWTH >= KN_UC_MAX_DECOMP, "NFC output bound below the longest decomposition");

size_t kn_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t n;
    uint32_t v, min;
    if (b >= 0xC2 && b <= 0xDF) {
        n = 2, v = b & 0x1F, min = 0x80;
    } else if (b >= 0xE0 && b <= 0xEF) {
        n = 3, v = b & 0x0F, min = 0x800;
    } else if (b >= 0xF0 && b <= 0xF4) {
        n = 4, v = b & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return n;
}

size_t kn_utf8_encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

size_t kn_utf8_validate(const uint8_t *s, size_t len) {
    size_t i = 0;
    uint32_t cp;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = kn_utf8_decode(s + i, len - i, &cp);
        if (!n) return i;
        i += n;
    }
    return len;
}

/* Value of the range holding cp, or 0 when none does. */
static uint8_t range_value(const kn_uc_range *r, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo) {
            hi = mid;
        } else if (cp > r[mid].hi) {
            lo = mid + 1;
        } else {
            return r[mid].value;
        }
    }
    return 0;
}

#define RANGE_VALUE(table, cp) range_value(table, sizeof table / sizeof table[0], cp)

bool kn_uc_is_letter(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return RANGE_VALUE(kn_uc_letter_number, cp) == 1;
}

bool kn_uc_is_number(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return RANGE_VALUE(kn_uc_letter_number, cp) == 2;
}

bool kn_uc_is_white_space(uint32_t cp) {
    /* PropList.txt White_Space, unchanged since Unicode 6.3 (which dropped U+180E). */
    switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return true;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

bool kn_uc_is_py_space(uint32_t cp) { return RANGE_VALUE(kn_uc_py_space, cp) != 0; }

int kn_uc_decimal_value(uint32_t cp) {
    const size_t n = sizeof kn_uc_digit_zero / sizeof kn_uc_digit_zero[0];
    size_t lo = 0, hi = n;
    while (lo < hi) { /* last run starting at or before cp */
        size_t mid = lo + (hi - lo) / 2;
        if (kn_uc_digit_zero[mid] <= cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0 || cp - kn_uc_digit_zero[lo - 1] > 9) return -1;
    return (int)(cp - kn_uc_digit_zero[lo - 1]);
}

/* ---- NFC (UAX #15), Hangul syllables by arithmetic --------------------------- */

enum {
    HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
    HANGUL_L_COUNT = 19, HANGUL_V_COUNT = 21, HANGUL_T_COUNT = 28,
    HANGUL_N_COUNT = HANGUL_V_COUNT * HANGUL_T_COUNT, HANGUL_S_COUNT = HANGUL_L_COUNT * HANGUL_N_COUNT,
};

static uint8_t ccc(uint32_t cp) { return cp < 0x300 ? 0 : RANGE_VALUE(kn_uc_ccc, cp); }

bool kn_uc_nfc_quick(const uint32_t *cps, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (cps[i] >= 0x300 && RANGE_VALUE(kn_uc_nfc_unsafe, cps[i])) return false;
    return true;
}

static const kn_uc_decomp_entry *find_decomp(uint32_t cp) {
    size_t lo = 0, hi = sizeof kn_uc_decomp / sizeof kn_uc_decomp[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (kn_uc_decomp[mid].cp < cp) lo = mid + 1;
        else if (kn_uc_decomp[mid].cp > cp) hi = mid;
        else return &kn_uc_decomp[mid];
    }
    return NULL;
}

/* The primary composite of (a, b), or 0 when they do not compose. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a - HANGUL_L < HANGUL_L_COUNT && b - HANGUL_V < HANGUL_V_COUNT)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_V_COUNT + (b - HANGUL_V)) * HANGUL_T_COUNT;
    if (a - HANGUL_S < HANGUL_S_COUNT && (a - HANGUL_S) % HANGUL_T_COUNT == 0 && b > HANGUL_T &&
        b - HANGUL_T < HANGUL_T_COUNT)
        return a + (b - HANGUL_T);
    size_t lo = 0, hi = sizeof kn_uc_comp / sizeof kn_uc_comp[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const kn_uc_comp_entry *e = &kn_uc_comp[mid];
        if (e->first < a || (e->first == a && e->second < b)) lo = mid + 1;
        else if (e->first > a || e->second > b) hi = mid;
        else return e->composite;
    }
    return 0;
}

size_t kn_uc_nfc(const uint32_t *in, size_t n, uint32_t *out) {
    /* 1. Full canonical decomposition. */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = in[i];
        const kn_uc_decomp_entry *d;
        if (cp - HANGUL_S < HANGUL_S_COUNT) {
            uint32_t s = cp - HANGUL_S;
            out[m++] = HANGUL_L + s / HANGUL_N_COUNT;
            out[m++] = HANGUL_V + (s % HANGUL_N_COUNT) / HANGUL_T_COUNT;
            if (s % HANGUL_T_COUNT) out[m++] = HANGUL_T + s % HANGUL_T_COUNT;
        } else if (cp >= 0xC0 && (d = find_decomp(cp))) {
            for (unsigned k = 0; k < d->len; k++) out[m++] = kn_uc_decomp_data[d->off + k];
        } else {
            out[m++] = cp;
        }
    }
    /* 2. Canonical ordering: stable insertion sort of each run of non-starters. */
    for (size_t i = 1; i < m; i++) {
        uint8_t c = ccc(out[i]);
        if (!c) continue;
        uint32_t cp = out[i];
        size_t j = i;
        while (j > 0 && ccc(out[j - 1]) > c) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = cp;
    }
    /* 3. Canonical composition (UAX #15 sample algorithm). A leading non-starter
     * gets last_class 256 so nothing composes with it. */
    if (m == 0) return 0;
    size_t starter = 0, w = 1;
    unsigned last_class = ccc(out[0]) ? 256 : 0;
    for (size_t i = 1; i < m; i++) {
        uint32_t cp = out[i];
        unsigned c = ccc(cp);
        uint32_t comp = compose(out[starter], cp);
        if (comp && (last_class < c || last_class == 0)) {
            out[starter] = comp;
            continue;
        }
        if (c == 0) starter = w;
        last_class = c;
        out[w++] = cp;
    }
    return w;
}

/* ---- lowercase ---------------------------------------------------------------- */

size_t kn_uc_lower(uint32_t cp, uint32_t out[KN_UC_LOWER_MAX]) {
    out[0] = cp;
    if (cp < 0x80) {
        if (cp >= 'A' && cp <= 'Z') out[0] = cp | 0x20;
        return 1;
    }
    for (size_t k = 0; k < sizeof kn_uc_lower2 / sizeof kn_uc_lower2[0]; k++) {
        if (kn_uc_lower2[k][0] == cp) {
            out[0] = kn_uc_lower2[k][1];
            out[1] = kn_uc_lower2[k][2];
            return 2;
        }
    }
    size_t lo = 0, hi = sizeof kn_uc_lower1 / sizeof kn_uc_lower1[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (kn_uc_lower1[mid][0] < cp) lo = mid + 1;
        else if (kn_uc_lower1[mid][0] > cp) hi = mid;
        else {
            out[0] = kn_uc_lower1[mid][1];
            break;
        }
    }
    return 1;
}

/* ---- extended grapheme clusters (UAX #29) --------------------------------------- */

/* Grapheme_Cluster_Break codes, as the generator numbers them. */
enum { GB_OTHER, GB_CR, GB_LF, GB_CONTROL, GB_EXTEND, GB_ZWJ, GB_RI, GB_PREPEND, GB_SPACING_MARK,
       GB_L, GB_V, GB_T, GB_LV, GB_LVT };
/* Indic_Conjunct_Break values (bits 4-5 of a table value). */
enum { INCB_NONE, INCB_CONSONANT, INCB_LINKER, INCB_EXTEND };
#define EXT_PICT 0x40

static unsigned grapheme_class(uint32_t cp) {
    if (cp - HANGUL_S < HANGUL_S_COUNT) return (cp - HANGUL_S) % HANGUL_T_COUNT ? GB_LVT : GB_LV;
    return RANGE_VALUE(kn_uc_grapheme, cp);
}

/* What the rules that look further back than one code point need to know about the
 * cluster so far. */
typedef struct {
    enum { CONJ_NONE, CONJ_CONSONANT, CONJ_LINKED } conj; /* GB9c: consonant, then a linker */
    enum { PICT_NONE, PICT_SEEN, PICT_ZWJ } pict;         /* GB11: ExtPict Extend* ZWJ */
    size_t ri;                                            /* GB12/13: regional indicators in a row */
} gb_state;

static void gb_advance(gb_state *st, unsigned cls) {
    unsigned gcb = cls & 15, incb = (cls >> 4) & 3;
    if (incb == INCB_CONSONANT) st->conj = CONJ_CONSONANT;
    else if (incb == INCB_LINKER && st->conj != CONJ_NONE) st->conj = CONJ_LINKED;
    else if (incb != INCB_EXTEND) st->conj = CONJ_NONE;
    if (cls & EXT_PICT) st->pict = PICT_SEEN;
    else if (gcb == GB_ZWJ && st->pict == PICT_SEEN) st->pict = PICT_ZWJ;
    else if (gcb != GB_EXTEND || st->pict != PICT_SEEN) st->pict = PICT_NONE;
    st->ri = gcb == GB_RI ? st->ri + 1 : 0;
}

static bool gb_joins(const gb_state *st, unsigned prev_cls, unsigned cls) {
    unsigned a = prev_cls & 15, b = cls & 15;
    if (a == GB_CR && b == GB_LF) return true;                                          /* GB3 */
    if (a == GB_CR || a == GB_LF || a == GB_CONTROL) return false;                      /* GB4 */
    if (b == GB_CR || b == GB_LF || b == GB_CONTROL) return false;                      /* GB5 */
    if (a == GB_L && (b == GB_L || b == GB_V || b == GB_LV || b == GB_LVT)) return true; /* GB6 */
    if ((a == GB_LV || a == GB_V) && (b == GB_V || b == GB_T)) return true;             /* GB7 */
    if ((a == GB_LVT || a == GB_T) && b == GB_T) return true;                           /* GB8 */
    if (b == GB_EXTEND || b == GB_ZWJ || b == GB_SPACING_MARK) return true;             /* GB9, 9a */
    if (a == GB_PREPEND) return true;                                                   /* GB9b */
    if (((cls >> 4) & 3) == INCB_CONSONANT && st->conj == CONJ_LINKED) return true;     /* GB9c */
    if ((cls & EXT_PICT) && st->pict == PICT_ZWJ) return true;                          /* GB11 */
    return a == GB_RI && b == GB_RI && st->ri % 2 == 1;                                 /* GB12, 13 */
}

size_t kn_uc_grapheme_end(const uint8_t *s, size_t len, size_t i) {
    uint32_t cp;
    size_t k = kn_utf8_decode(s + i, len - i, &cp);
    if (!k) return i + 1;
    gb_state st = {CONJ_NONE, PICT_NONE, 0};
    unsigned prev = grapheme_class(cp);
    gb_advance(&st, prev);
    for (i += k; i < len; i += k) {
        if (!(k = kn_utf8_decode(s + i, len - i, &cp))) break;
        unsigned cls = grapheme_class(cp);
        if (!gb_joins(&st, prev, cls)) break;
        gb_advance(&st, cls);
        prev = cls;
    }
    return i;
}
