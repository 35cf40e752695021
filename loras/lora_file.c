/* Reading a LoRA file into patches of a kn_lora_model: ComfyUI's
 * lora_convert (whole-file conversions), then load_lora's suffixes per stem
 * of the key map (lora_keys.c), each validated against the place it patches.
 * Formats and errors: lora.h. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loras/lora_impl.h"

/* Tensor roles, one per recognised suffix. The seven LoRA up/down spellings
 * are pairs R_UP + p / R_DOWN + p, tried in ComfyUI's order. */
#define N_PAIRS 7
enum {
    R_ALPHA,
    R_DORA,
    R_MID,
    R_UP,
    R_DOWN = R_UP + N_PAIRS,
    R_W1A = R_DOWN + N_PAIRS, /* LoHa */
    R_W1B,
    R_W2A,
    R_W2B,
    R_T1,
    R_T2,
    R_K1, /* LoKr */
    R_K1A,
    R_K1B,
    R_K2,
    R_K2A,
    R_K2B,
    R_KT2,
    R_OFT,
    R_WNORM,
    R_BNORM,
    R_DIFF,
    R_DIFFB,
    R_SET,
    R_RESHAPE,
    R_COUNT
};

static const struct {
    const char *suffix;
    int role;
} suffixes[] = {
    {".alpha", R_ALPHA},
    {".dora_scale", R_DORA},
    {".lora_mid.weight", R_MID},
    {".lora_up.weight", R_UP + 0},
    {".lora_down.weight", R_DOWN + 0},
    {"_lora.up.weight", R_UP + 1},
    {"_lora.down.weight", R_DOWN + 1},
    {".lora_B.weight", R_UP + 2},
    {".lora_A.weight", R_DOWN + 2},
    {".lora.up.weight", R_UP + 3},
    {".lora.down.weight", R_DOWN + 3},
    {".lora_B", R_UP + 4},
    {".lora_A", R_DOWN + 4},
    {".lora_linear_layer.up.weight", R_UP + 5},
    {".lora_linear_layer.down.weight", R_DOWN + 5},
    {".lora_B.default.weight", R_UP + 6},
    {".lora_A.default.weight", R_DOWN + 6},
    {".hada_w1_a", R_W1A},
    {".hada_w1_b", R_W1B},
    {".hada_w2_a", R_W2A},
    {".hada_w2_b", R_W2B},
    {".hada_t1", R_T1},
    {".hada_t2", R_T2},
    {".lokr_w1", R_K1},
    {".lokr_w1_a", R_K1A},
    {".lokr_w1_b", R_K1B},
    {".lokr_w2", R_K2},
    {".lokr_w2_a", R_K2A},
    {".lokr_w2_b", R_K2B},
    {".lokr_t2", R_KT2},
    {".oft_blocks", R_OFT},
    {".w_norm", R_WNORM},
    {".b_norm", R_BNORM},
    {".diff", R_DIFF},
    {".diff_b", R_DIFFB},
    {".set_weight", R_SET},
    {".reshape_weight", R_RESHAPE},
};
#define N_SUFFIXES ((int)(sizeof suffixes / sizeof suffixes[0]))

static const char *role_suffix(int role) {
    for (int k = 0; k < N_SUFFIXES; k++)
        if (suffixes[k].role == role) return suffixes[k].suffix;
    return "?";
}

/* ---- whole-file conversions (comfy/lora_convert.py) ------------------------------ */

/* A file layout ComfyUI renames before mapping: when every `needs` key is
 * present, each key k becomes prefix + k with `rep` applied in order (every
 * occurrence, as str.replace). `widen`, when set, gives the stem whose
 * target is zero-padded to [rows of widen[1], cols of widen[2]] first (the
 * reshape_weight ComfyUI adds for BFL control LoRAs' wider img_in). */
#define MAX_REPS 9

typedef struct conversion {
    const char *needs[2];
    const char *prefix;
    const char *rep[MAX_REPS][2];
    const char *widen[3];
} conversion;

static const conversion conversions[] = {
    {{"img_in.lora_A.weight", "single_blocks.0.norm.key_norm.scale"}, /* BFL Flux control (Canny, Depth) */
     "diffusion_model.",
     {{".lora_B.bias", ".diff_b"}, {"_norm.scale", "_norm.scale.set_weight"}},
     {"diffusion_model.img_in", "img_in.lora_B.weight", "img_in.lora_A.weight"}},
    {{"single_blocks.37.processor.qkv_lora.up.weight", "double_blocks.18.processor.qkv_lora2.up.weight"}, /* USO */
     "diffusion_model.",
     {{".down.weight", ".lora_down.weight"},
      {".up.weight", ".lora_up.weight"},
      {".qkv_lora2.", ".txt_attn.qkv."},
      {".qkv_lora1.", ".img_attn.qkv."},
      {".proj_lora1.", ".img_attn.proj."},
      {".proj_lora2.", ".txt_attn.proj."},
      {".qkv_lora.", ".linear1_qkv."},
      {".proj_lora.", ".linear2."},
      {".processor.", "."}},
     {NULL, NULL, NULL}},
};

/* s with every `from` replaced by `to`, into a new string (NULL: out of memory). */
static char *replace_all(const char *s, const char *from, const char *to) {
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    for (const char *p = strstr(s, from); p; p = strstr(p + fl, from)) n++;
    char *out = malloc(strlen(s) + n * (tl > fl ? tl - fl : 0) + 1), *o = out;
    if (!out) return NULL;
    for (const char *p; (p = strstr(s, from)) != NULL; s = p + fl) {
        memcpy(o, s, (size_t)(p - s));
        o += p - s;
        memcpy(o, to, tl);
        o += tl;
    }
    strcpy(o, s);
    return out;
}

/* The conversion of file f, or NULL. */
static const conversion *conversion_of(const kn_st_file *f) {
    for (size_t c = 0; c < sizeof conversions / sizeof conversions[0]; c++)
        if (kn_st_find(f, conversions[c].needs[0]) && kn_st_find(f, conversions[c].needs[1])) return &conversions[c];
    return NULL;
}

/* l->renamed: every key of l's file under conversion c. */
static int rename_keys(kn_lora *l, const conversion *c, kn_err *err) {
    int n = kn_st_count(l->file);
    if (!(l->renamed = calloc((size_t)n + 1, sizeof *l->renamed)))
        return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    for (int i = 0; i < n; i++) {
        const char *key = kn_st_at(l->file, i)->name;
        char *s = malloc(strlen(c->prefix) + strlen(key) + 1);
        if (s) strcat(strcpy(s, c->prefix), key);
        for (int r = 0; s && r < MAX_REPS && c->rep[r][0]; r++) {
            char *t = replace_all(s, c->rep[r][0], c->rep[r][1]);
            free(s);
            s = t;
        }
        if (!(l->renamed[i] = s)) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    }
    return KN_OK;
}

/* ---- loading a LoRA file ---------------------------------------------------------- */

typedef struct group {
    int stem;
    int idx[R_COUNT];   /* file tensor index per role, -1 */
    int64_t reshape[2]; /* reshape_weight, 0: none */
} group;

typedef struct loader {
    kn_lora *l;
    const kn_lora_model *m;
    char *used; /* per file tensor */
    kn_err *err;
} loader;

static const kn_tensor *ftensor(const loader *ld, int i) { return kn_st_at(ld->l->file, i); }
static const char *path_of(const loader *ld) { return kn_st_path(ld->l->file); }
/* A file tensor's key as the key map sees it (after a conversion). */
static const char *key_of(const kn_lora *l, int i) { return l->renamed ? l->renamed[i] : kn_st_at(l->file, i)->name; }

/* "'key' [O, I] F32", or "rows [a, b) of 'key' [O, I] F32" for a slice, into buf. */
static const char *dest(const loader *ld, const place *at, char *buf, size_t len) {
    const target *tg = &ld->m->t[at->target];
    char d[96];
    kn_tensor_desc(&tg->orig, d, sizeof d);
    if (at->row0 == 0 && at->rows == tg->orig.ne[0]) snprintf(buf, len, "'%s' %s", tg->key, d);
    else
        snprintf(buf, len, "rows [%lld, %lld) of '%s' %s", (long long)at->row0, (long long)(at->row0 + at->rows),
                 tg->key, d);
    return buf;
}

/* A factor must be float and finite: a NaN would reach the sampler's image. */
static int check_float(const loader *ld, int i) {
    const kn_tensor *t = ftensor(ld, i);
    if (!kn_dtype_is_float(t->dtype))
        return kn_fail(ld->err, KN_ERR_FORMAT, "%s: '%s' has dtype %s, LoRA factors must be float", path_of(ld),
                       t->name, kn_dtype_name(t->dtype));
    int64_t bad = kn_first_nonfinite(t->data, t->dtype, (size_t)kn_tensor_numel(t));
    if (bad >= 0) {
        float v;
        kn_to_f32(&v, (const char *)t->data + (size_t)bad * kn_dtype_size(t->dtype), t->dtype, 1, 1.0f);
        return kn_fail(ld->err, KN_ERR_FORMAT, "%s: '%s' holds %s at element %lld, LoRA factors must be finite",
                       path_of(ld), t->name, isnan(v) ? "NaN" : v > 0 ? "inf" : "-inf", (long long)bad);
    }
    return KN_OK;
}

/* A low-rank factor pair needs rank >= 1 (down [r, in] with r > 0). */
static int check_rank(const loader *ld, int i, const kn_tensor *down) {
    if (down->ne[0] > 0) return KN_OK;
    return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' has rank 0 (%lld rows): nothing to apply", path_of(ld),
                   ftensor(ld, i)->name, (long long)down->ne[0]);
}

/* Tensor i must be 2-D [r, c] (-1: any); errors name the file, the key and what it patches. */
static int factor2(const loader *ld, int i, int64_t r, int64_t c, const place *at, const kn_tensor **out) {
    KN_TRY(check_float(ld, i));
    const kn_tensor *t = ftensor(ld, i);
    if (t->ndim != 2 || (r >= 0 && t->ne[0] != r) || (c >= 0 && t->ne[1] != c)) {
        char a[96], b[600];
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' is %s, expected [%lld, %lld] (-1: any) to patch %s",
                       path_of(ld), t->name, kn_tensor_desc(t, a, sizeof a), (long long)r, (long long)c,
                       dest(ld, at, b, sizeof b));
    }
    *out = t;
    return KN_OK;
}

static int read_alpha(const loader *ld, int i, double *alpha) {
    KN_TRY(check_float(ld, i));
    const kn_tensor *t = ftensor(ld, i);
    if (kn_tensor_numel(t) != 1)
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' must be a scalar, has %lld values", path_of(ld), t->name,
                       (long long)kn_tensor_numel(t));
    float v;
    kn_to_f32(&v, t->data, t->dtype, 1, t->scale);
    if (!isfinite(v))
        return kn_fail(ld->err, KN_ERR_FORMAT, "%s: '%s' is %g, alpha must be finite", path_of(ld), t->name, (double)v);
    *alpha = v;
    return KN_OK;
}

/* A .reshape_weight tensor: two integers, [rows, cols]. */
static int read_reshape(const loader *ld, int i, int64_t out[2]) {
    const kn_tensor *t = ftensor(ld, i);
    if ((t->dtype != KN_I64 && t->dtype != KN_I32) || kn_tensor_numel(t) != 2)
        return kn_fail(ld->err, KN_ERR_FORMAT, "%s: '%s' must hold 2 integers (rows, cols)", path_of(ld), t->name);
    for (int k = 0; k < 2; k++)
        out[k] = t->dtype == KN_I64 ? ((const int64_t *)t->data)[k] : ((const int32_t *)t->data)[k];
    return KN_OK;
}

static int unsupported(const loader *ld, int i, const char *what) {
    return kn_fail(ld->err, KN_ERR_UNSUPPORTED, "%s: '%s': %s is not supported", path_of(ld), ftensor(ld, i)->name,
                   what);
}

/* Marks the present roles [from, to] of g consumed. */
static void consume(loader *ld, const group *g, int from, int to) {
    for (int r = from; r <= to; r++)
        if (g->idx[r] >= 0) ld->used[g->idx[r]] = 1;
}

/* Records p; a later patch of the same place replaces it (ComfyUI's patch
 * dict, keyed by target and offset). */
static void set_patch(kn_lora *l, const patch *p) {
    for (int i = 0; i < l->n; i++)
        if (memcmp(&l->p[i].at, &p->at, sizeof p->at) == 0) {
            l->p[i] = *p;
            return;
        }
    l->p[l->n++] = *p;
}

/* The [rows, cols] a plain LoRA of g patches: its place's, or its
 * reshape_weight (the whole weight zero-padded to it first; ComfyUI's
 * pad_tensor_to_shape). */
static int lora_shape(loader *ld, const group *g, const place *at, int64_t *rows, int64_t *cols) {
    if (!g->reshape[0]) return KN_OK;
    const kn_tensor *w = &ld->m->t[at->target].orig;
    if (w->ndim != 2 || at->rows != w->ne[0] || at->swap || g->reshape[0] < w->ne[0] || g->reshape[1] < w->ne[1])
        return kn_fail(ld->err, KN_ERR_UNSUPPORTED,
                       "%s: '%s' reshapes '%s' to [%lld, %lld]: only widening a whole 2-D weight is supported",
                       path_of(ld), ld->m->stems[g->stem].name, ld->m->t[at->target].key, (long long)g->reshape[0],
                       (long long)g->reshape[1]);
    *rows = g->reshape[0];
    *cols = g->reshape[1];
    return KN_OK;
}

/* A LoRA/LoHa/LoKr/OFT adapter of group g, or kind -1 when none. */
static int adapter(loader *ld, const group *g, const place *at, int has_alpha, double alpha, patch *p) {
    const int *ix = g->idx;
    const kn_tensor *w = &ld->m->t[at->target].orig;
    int64_t O = at->rows, I = w->ndim == 2 ? w->ne[1] : -1;
    const char *stem = ld->m->stems[g->stem].name;
    char b[600];
    p->kind = (patch_kind)-1;
    int any = 0;
    for (int q = 0; q < N_PAIRS && !any; q++) {
        if (ix[R_UP + q] < 0 || ix[R_DOWN + q] < 0) continue;
        any = 1;
        if (ix[R_MID] >= 0) return unsupported(ld, ix[R_MID], "a Tucker (lora_mid) factor");
        int64_t rows = O, cols = I;
        KN_TRY(lora_shape(ld, g, at, &rows, &cols));
        KN_TRY(factor2(ld, ix[R_DOWN + q], -1, cols, at, &p->f[1]));
        KN_TRY(check_rank(ld, ix[R_DOWN + q], p->f[1]));
        KN_TRY(factor2(ld, ix[R_UP + q], rows, p->f[1]->ne[0], at, &p->f[0]));
        p->kind = P_LORA;
        p->scale = has_alpha ? alpha / (double)p->f[1]->ne[0] : 1.0;
        p->at.rows = rows; /* all rows of a widened weight */
        p->shape[0] = g->reshape[0] ? rows : w->ne[0];
        p->shape[1] = cols;
        ld->used[ix[R_UP + q]] = ld->used[ix[R_DOWN + q]] = 1;
        if (ix[R_RESHAPE] >= 0) ld->used[ix[R_RESHAPE]] = 1;
    }
    if (ix[R_W1A] >= 0 || ix[R_W1B] >= 0 || ix[R_W2A] >= 0 || ix[R_W2B] >= 0) {
        for (int r = R_W1A; r <= R_W2B; r++)
            if (ix[r] < 0)
                return kn_fail(ld->err, KN_ERR_FORMAT, "%s: LoHa '%s' lacks %s", path_of(ld), stem, role_suffix(r));
        if (ix[R_T1] >= 0 || ix[R_T2] >= 0)
            return unsupported(ld, ix[R_T1] >= 0 ? ix[R_T1] : ix[R_T2], "LoHa Tucker (hada_t*)");
        KN_TRY(factor2(ld, ix[R_W1B], -1, I, at, &p->f[1]));
        KN_TRY(check_rank(ld, ix[R_W1B], p->f[1]));
        KN_TRY(factor2(ld, ix[R_W1A], O, p->f[1]->ne[0], at, &p->f[0]));
        KN_TRY(factor2(ld, ix[R_W2B], -1, I, at, &p->f[3]));
        KN_TRY(factor2(ld, ix[R_W2A], O, p->f[3]->ne[0], at, &p->f[2]));
        p->kind = P_LOHA;
        p->scale = has_alpha ? alpha / (double)p->f[1]->ne[0] : 1.0;
        consume(ld, g, R_W1A, R_W2B);
    }
    if (ix[R_K1] >= 0 || ix[R_K2] >= 0 || ix[R_K1A] >= 0 || ix[R_K2A] >= 0) {
        if (ix[R_KT2] >= 0) return unsupported(ld, ix[R_KT2], "LoKr Tucker (lokr_t2)");
        int64_t dims[2][2]; /* rows, cols of w1 and w2 */
        int64_t rank = 0;
        for (int k = 0; k < 2; k++) {
            int full = k ? R_K2 : R_K1, a = full + 1, c = full + 2;
            const kn_tensor **f = &p->f[3 * k];
            f[0] = f[1] = f[2] = NULL;
            if (ix[full] >= 0) {
                KN_TRY(factor2(ld, ix[full], -1, -1, at, &f[0]));
                dims[k][0] = f[0]->ne[0];
                dims[k][1] = f[0]->ne[1];
            } else if (ix[a] >= 0 && ix[c] >= 0) {
                KN_TRY(factor2(ld, ix[c], -1, -1, at, &f[2]));
                KN_TRY(factor2(ld, ix[a], -1, f[2]->ne[0], at, &f[1]));
                dims[k][0] = f[1]->ne[0];
                dims[k][1] = f[2]->ne[1];
                rank = f[2]->ne[0]; /* w2's split rank wins over w1's (ComfyUI's `dim`) */
            } else {
                const char *s = k ? ".lokr_w2" : ".lokr_w1";
                return kn_fail(ld->err, KN_ERR_FORMAT, "%s: LoKr '%s' lacks %s (or %s_a and %s_b)", path_of(ld),
                               stem, s, s, s);
            }
        }
        if (dims[0][0] * dims[1][0] != O || dims[0][1] * dims[1][1] != I)
            return kn_fail(ld->err, KN_ERR_SHAPE,
                           "%s: LoKr '%s' gives kron([%lld, %lld], [%lld, %lld]), which does not fit %s", path_of(ld), stem, (long long)dims[0][0], (long long)dims[0][1], (long long)dims[1][0],
                           (long long)dims[1][1], dest(ld, at, b, sizeof b));
        p->kind = P_LOKR;
        p->scale = has_alpha && rank ? alpha / (double)rank : 1.0;
        consume(ld, g, R_K1, R_K2B);
    }
    if (ix[R_OFT] >= 0) {
        KN_TRY(check_float(ld, ix[R_OFT]));
        const kn_tensor *t = ftensor(ld, ix[R_OFT]);
        if (t->ndim != 3 || t->ne[1] != t->ne[2] || t->ne[0] * t->ne[1] != O || I < 0) {
            char x[96];
            return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' is %s, expected [k, b, b] with k*b = %lld rows of %s",
                           path_of(ld), t->name, kn_tensor_desc(t, x, sizeof x), (long long)O,
                           dest(ld, at, b, sizeof b));
        }
        if (ix[R_DORA] >= 0) return unsupported(ld, ix[R_DORA], "OFT with dora_scale");
        /* its delta is formed and added in place block by block, with no room for a row swap */
        if (at->swap) return unsupported(ld, ix[R_OFT], "OFT on a weight whose halves are swapped (norm_out.linear)");
        p->kind = P_OFT;
        p->f[0] = t;
        p->scale = has_alpha ? alpha : 0.0;
        ld->used[ix[R_OFT]] = 1;
    }
    if ((int)p->kind >= 0 && I < 0)
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' patches the 1-D tensor %s; only .diff/.set_weight can",
                       path_of(ld), stem, dest(ld, at, b, sizeof b));
    if ((int)p->kind >= 0 && p->kind != P_LORA) { /* a later kind replaced a LoRA: the weight as it is */
        p->at.rows = O;
        p->shape[0] = w->ne[0];
        p->shape[1] = I;
    }
    p->dora = NULL;
    if ((int)p->kind >= 0 && p->kind != P_OFT && ix[R_DORA] >= 0) {
        KN_TRY(check_float(ld, ix[R_DORA]));
        const kn_tensor *d = ftensor(ld, ix[R_DORA]);
        int64_t n = kn_tensor_numel(d), rows = p->at.rows, cols = p->shape[1];
        if (!((d->ne[0] == rows && n == rows) || (n == cols && d->ne[0] == 1))) {
            char x[96];
            return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' is %s, expected [%lld, 1] or [1, %lld] for %s", path_of(ld),
                           d->name, kn_tensor_desc(d, x, sizeof x), (long long)rows, (long long)cols,
                           dest(ld, at, b, sizeof b));
        }
        p->dora = d;
    }
    return KN_OK;
}

/* A whole-tensor patch (.diff, .w_norm, .set_weight, .diff_b, .b_norm) of `at`. */
static int whole(loader *ld, int i, const place *at, patch_kind kind) {
    KN_TRY(check_float(ld, i));
    const kn_tensor *t = ftensor(ld, i), *w = &ld->m->t[at->target].orig;
    int same = t->ndim == w->ndim && t->ne[0] == at->rows;
    for (int d = 1; same && d < t->ndim; d++) same = t->ne[d] == w->ne[d];
    if (!same) {
        char a[96], b[600];
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' is %s, it patches %s", path_of(ld), t->name,
                       kn_tensor_desc(t, a, sizeof a), dest(ld, at, b, sizeof b));
    }
    patch p = {.at = *at, .kind = kind, .f = {t}, .shape = {w->ne[0], w->ndim == 2 ? w->ne[1] : 1}};
    set_patch(ld->l, &p);
    ld->used[i] = 1;
    return KN_OK;
}

/* The bias of the weight target ti ("x.weight" -> "x.bias"), or -1. */
static int bias_of(const kn_lora_model *m, int ti) {
    const char *key = m->t[ti].key;
    size_t len = strlen(key);
    if (len < 7 || strcmp(key + len - 7, ".weight") != 0) return -1;
    char name[512];
    if (len - 7 + 6 >= sizeof name) return -1;
    memcpy(name, key, len - 7);
    strcpy(name + len - 7, ".bias");
    return kn_lora_find_target(m, name);
}

static int load_group(loader *ld, const group *g) {
    const place *at = &ld->m->stems[g->stem].at;
    const kn_tensor *w = &ld->m->t[at->target].orig;
    double alpha = 0.0;
    int has_alpha = g->idx[R_ALPHA] >= 0;
    if (has_alpha) KN_TRY(read_alpha(ld, g->idx[R_ALPHA], &alpha));
    consume(ld, g, R_ALPHA, R_DORA);
    patch p = {.at = *at};
    KN_TRY(adapter(ld, g, at, has_alpha, alpha, &p));
    if ((int)p.kind >= 0) set_patch(ld->l, &p);
    /* then, as in comfy.lora.load_lora, the whole-tensor entries (later ones
     * replace earlier ones). A bias entry needs the stem to name a whole
     * weight: ComfyUI derives the bias key from a plain key only, so a slice
     * or swapped stem's bias delta patches nothing (here: it stays unloaded). */
    int plain = at->row0 == 0 && at->rows == w->ne[0] && !at->swap;
    static const struct {
        int role;
        int on_bias;
        patch_kind kind;
    } wholes[] = {{R_WNORM, 0, P_DIFF}, {R_BNORM, 1, P_DIFF}, {R_DIFF, 0, P_DIFF}, {R_DIFFB, 1, P_DIFF},
                  {R_SET, 0, P_SET}};
    for (size_t k = 0; k < sizeof wholes / sizeof wholes[0]; k++) {
        int i = g->idx[wholes[k].role];
        if (i < 0 || (wholes[k].on_bias && !plain)) continue;
        place dst = *at;
        if (wholes[k].on_bias && (dst.target = bias_of(ld->m, at->target)) < 0) continue;
        dst.rows = ld->m->t[dst.target].orig.ne[0];
        KN_TRY(whole(ld, i, &dst, wholes[k].kind));
    }
    return KN_OK;
}

/* Groups p by target, in load order within a target (a counting sort),
 * indexes the groups, and makes the up-row views runtime adapters read. */
static int index_patches(loader *ld) {
    kn_lora *l = ld->l;
    int *next = malloc(((size_t)ld->m->n + 1) * sizeof *next);
    patch *sorted = malloc(((size_t)l->n + 1) * sizeof *sorted);
    if (!next || !sorted) {
        free(next), free(sorted);
        return kn_fail(ld->err, KN_ERR_NOMEM, "lora: out of memory");
    }
    for (int i = 0; i < ld->m->n; i++) l->first[i] = 0;
    for (int i = 0; i < l->n; i++) l->first[l->p[i].at.target]++;
    int at = 0;
    for (int i = 0; i < ld->m->n; i++) {
        int c = l->first[i];
        l->first[i] = c ? at : -1;
        l->n_targets += c > 0;
        at += c;
    }
    for (int i = 0; i < ld->m->n; i++) next[i] = l->first[i];
    for (int i = 0; i < l->n; i++) sorted[next[l->p[i].at.target]++] = l->p[i];
    memcpy(l->p, sorted, (size_t)l->n * sizeof *sorted);
    free(next), free(sorted);
    int rc = KN_OK;
    for (int i = 0; !rc && i < l->n; i++) {
        patch *p = &l->p[i];
        segment seg[2];
        int ns = p->kind == P_LORA ? kn_lora_segments(&p->at, seg) : 0;
        for (int k = 0; !rc && k < ns; k++)
            rc = kn_tensor_slice(&p->up_rows[k], p->f[0], 0, seg[k].src, seg[k].n, ld->err);
    }
    return rc;
}

/* Groups the file's tensors by stem (suffix, then key map) and loads each group. */
static int map_file(loader *ld, const conversion *conv) {
    kn_lora *l = ld->l;
    int n = kn_st_count(l->file);
    group *gs = calloc((size_t)n + 1, sizeof *gs);
    int *group_of_stem = malloc(((size_t)ld->m->n_stems + 1) * sizeof *group_of_stem);
    int ng = 0, rc = KN_OK;
    if (!gs || !group_of_stem) rc = kn_fail(ld->err, KN_ERR_NOMEM, "lora: out of memory");
    for (int s = 0; !rc && s < ld->m->n_stems; s++) group_of_stem[s] = -1;
    for (int i = 0; !rc && i < n; i++) {
        const char *key = key_of(l, i);
        size_t len = strlen(key);
        for (int k = 0; k < N_SUFFIXES; k++) {
            size_t sl = strlen(suffixes[k].suffix);
            if (len <= sl || strcmp(key + len - sl, suffixes[k].suffix) != 0) continue;
            int s = kn_lora_keys_find(ld->m, key, len - sl);
            if (s < 0) continue;
            if (group_of_stem[s] < 0) {
                group_of_stem[s] = ng;
                gs[ng].stem = s;
                for (int r = 0; r < R_COUNT; r++) gs[ng].idx[r] = -1;
                ng++;
            }
            gs[group_of_stem[s]].idx[suffixes[k].role] = i;
            break;
        }
    }
    for (int g = 0; !rc && g < ng; g++) {
        const char *stem = ld->m->stems[gs[g].stem].name;
        if (gs[g].idx[R_RESHAPE] >= 0) rc = read_reshape(ld, gs[g].idx[R_RESHAPE], gs[g].reshape);
        if (!rc && conv && conv->widen[0] && strcmp(stem, conv->widen[0]) == 0) {
            const kn_tensor *up = kn_st_find(l->file, conv->widen[1]), *down = kn_st_find(l->file, conv->widen[2]);
            if (up && down && up->ndim == 2 && down->ndim == 2) {
                gs[g].reshape[0] = up->ne[0];
                gs[g].reshape[1] = down->ne[1];
            }
        }
    }
    /* per group at most: its adapter and its whole-weight entry (one place,
     * so one replaces the other, unless a reshape widened the adapter's), a bias */
    if (!rc && !(l->p = calloc((size_t)ng * 3 + 1, sizeof *l->p)))
        rc = kn_fail(ld->err, KN_ERR_NOMEM, "lora: out of memory");
    for (int g = 0; !rc && g < ng; g++) rc = load_group(ld, &gs[g]);
    if (!rc) rc = index_patches(ld);
    for (int i = 0; !rc && i < n; i++)
        if (!ld->used[i]) l->unloaded[l->n_unloaded++] = key_of(l, i);
    free(gs);
    free(group_of_stem);
    return rc;
}

static atomic_uint_fast64_t next_serial = 1;

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int kn_lora_load(kn_lora **out, const char *path, kn_lora_model *m, kn_err *err) {
    *out = NULL;
    if (m->stems_dirty) KN_TRY(kn_lora_keys_build(m, err));
    kn_lora *l = calloc(1, sizeof *l);
    if (!l) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    l->model = m;
    l->serial = atomic_fetch_add(&next_serial, 1);
    int rc = kn_st_open(&l->file, path, err);
    int n = rc ? 0 : kn_st_count(l->file);
    loader ld = {l, m, NULL, err};
    if (!rc && (!(l->name = strdup(base_name(path))) || !(l->first = malloc(((size_t)m->n + 1) * sizeof(int))) ||
                !(l->unloaded = calloc((size_t)n + 1, sizeof *l->unloaded)) || !(ld.used = calloc((size_t)n + 1, 1))))
        rc = kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    const conversion *conv = rc ? NULL : conversion_of(l->file);
    if (conv) rc = rename_keys(l, conv, err);
    if (!rc) rc = map_file(&ld, conv);
    free(ld.used);
    if (rc) {
        kn_lora_free(l);
        return rc;
    }
    *out = l;
    return KN_OK;
}

void kn_lora_free(kn_lora *l) {
    if (!l) return;
    for (int i = 0; l->renamed && i < kn_st_count(l->file); i++) free(l->renamed[i]);
    free(l->renamed);
    kn_st_close(l->file);
    free(l->name);
    free(l->p);
    free(l->first);
    free(l->unloaded);
    free(l);
}

void kn_lora_patches_of(const kn_lora *l, int ti, int *from, int *to) {
    *from = *to = l->first[ti];
    if (*from < 0) {
        *from = *to = 0;
        return;
    }
    while (*to < l->n && l->p[*to].at.target == ti) (*to)++;
}

const char *kn_lora_name(const kn_lora *l) { return l->name; }
int kn_lora_patch_count(const kn_lora *l) { return l->n_targets; }
int kn_lora_tensor_count(const kn_lora *l) { return kn_st_count(l->file); }
int kn_lora_unloaded_count(const kn_lora *l) { return l->n_unloaded; }
const kn_st_file *kn_lora_file(const kn_lora *l) { return l->file; }
const char *kn_lora_unloaded(const kn_lora *l, int i) { return i >= 0 && i < l->n_unloaded ? l->unloaded[i] : NULL; }

const char *kn_lora_warning(const kn_lora *l, char *buf, size_t len) {
    if (!len) return buf;
    buf[0] = '\0';
    if (!l->n_unloaded) return buf;
    size_t w = (size_t)snprintf(buf, len, "[%s] lora keys not loaded (%d / %d): [", l->name, l->n_unloaded,
                                kn_st_count(l->file));
    for (int i = 0; i < l->n_unloaded && w < len; i++)
        w += (size_t)snprintf(buf + w, len - w, "%s'%s'", i ? ", " : "", l->unloaded[i]);
    if (w < len) snprintf(buf + w, len - w, "]");
    return buf;
}
