/* LoRA formats, key mapping and hot-swap: see lora.h for the design. */
#include "loras/lora.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* Rows of a LoHa/LoKr delta computed at once: bounds the scratch to 4 MB of f32. */
#define PANEL_FLOATS ((int64_t)1 << 20)
/* Elements per parallel chunk of the widen / round passes. */
#define CHUNK ((int64_t)1 << 16)

/* ---- key map ------------------------------------------------------------------ */

typedef struct applied {
    uint64_t serial; /* kn_lora identity (never reused, unlike an address) */
    double strength;
} applied;

typedef struct target {
    char *key;
    kn_tensor *slot; /* borrowed: what the model reads */
    kn_tensor orig;  /* the file's view */
    void *buf;       /* patched copy (owned), NULL while the slot is the original */
    size_t buf_bytes;
    applied *sig; /* the patch list buf holds */
    int n_sig;
    kn_adapter_list *run; /* borrowed: the adapter list the model reads beside slot, NULL: merge only */
    kn_lora_adapter *ad;  /* what run points at (owned; the factors are the kn_loras') */
    applied *rsig;        /* the patch list ad holds */
    int n_rsig;
} target;

typedef struct stem {
    char *name;
    int target;
} stem;

struct kn_lora_model {
    const kn_key_alias *aliases; /* the family's (static) */
    int n_aliases;
    int runtime; /* plain LoRAs on slots with an adapter list stay unmerged */
    target *t;
    int n, cap;
    stem *stems; /* sorted by name; rebuilt after kn_lora_model_add */
    int n_stems, stems_dirty;
};

/* ---- LoRA files ------------------------------------------------------------------ */

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
};
#define N_SUFFIXES ((int)(sizeof suffixes / sizeof suffixes[0]))

static const char *role_suffix(int role) {
    for (int k = 0; k < N_SUFFIXES; k++)
        if (suffixes[k].role == role) return suffixes[k].suffix;
    return "?";
}

typedef enum patch_kind { P_LORA, P_LOHA, P_LOKR, P_OFT, P_DIFF, P_SET } patch_kind;

/* One patch of one model tensor. f[] by kind:
 *   LORA: up [O, r], down [r, I]
 *   LOHA: w1a [O, r1], w1b [r1, I], w2a [O, r2], w2b [r2, I]
 *   LOKR: w1, w1a, w1b, w2, w2a, w2b (w1 or w1a/w1b; w2 likewise)
 *   OFT:  blocks [k, b, b];   DIFF, SET: the tensor */
typedef struct patch {
    int target;
    patch_kind kind;
    const kn_tensor *f[6];
    const kn_tensor *dora; /* [O, 1] (output axis) or [1, I], or NULL */
    double scale;          /* alpha / rank (1 without alpha); OFT: the constraint (0: none) */
} patch;

struct kn_lora {
    kn_st_file *file;
    char *name;
    const kn_lora_model *model;
    uint64_t serial;
    patch *p;
    int n;
    int *patch_of; /* per model target: index into p, or -1 */
    const char **unloaded;
    int n_unloaded;
};

static atomic_uint_fast64_t next_serial = 1;

/* ---- the weight table ------------------------------------------------------------ */

int kn_lora_model_new(kn_lora_model **out, const kn_key_alias *aliases, int n_aliases, kn_err *err) {
    if (!(*out = calloc(1, sizeof **out))) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    (*out)->aliases = aliases;
    (*out)->n_aliases = n_aliases;
    (*out)->runtime = 1;
    return KN_OK;
}

int kn_lora_model_add(kn_lora_model *m, const char *key, kn_tensor *slot, kn_adapter_list *run, kn_err *err) {
    if (!kn_tensor_is_contiguous(slot) || slot->device != KN_DEV_CPU || !kn_dtype_is_float(slot->dtype))
        return kn_fail(err, KN_ERR_UNSUPPORTED, "lora: weight '%s' is not a contiguous CPU float tensor", key);
    if (run && (slot->ndim != 2 || run->n))
        return kn_fail(err, KN_ERR_INVALID, "lora: '%s' takes runtime adapters but is not a 2-D weight with an empty list",
                       key);
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 256;
        target *t = realloc(m->t, (size_t)cap * sizeof *t);
        if (!t) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
        m->t = t;
        m->cap = cap;
    }
    target *t = &m->t[m->n];
    memset(t, 0, sizeof *t);
    if (!(t->key = strdup(key))) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    t->slot = slot;
    t->orig = *slot;
    t->run = run;
    m->n++;
    m->stems_dirty = 1;
    return KN_OK;
}

int kn_lora_model_from_table(kn_lora_model **out, const kn_key_alias *aliases, int n_aliases, kn_weight_table *table,
                             kn_err *err) {
    KN_TRY(kn_lora_model_new(out, aliases, n_aliases, err));
    for (int i = 0; i < table->n; i++) {
        kn_weight_slot *s = &table->slot[i];
        if (kn_lora_model_add(*out, s->key, s->t, s->linear ? &s->run : NULL, err)) {
            kn_lora_model_free(*out);
            *out = NULL;
            return err->code;
        }
    }
    return KN_OK;
}

static void target_restore(target *t) {
    *t->slot = t->orig;
    free(t->buf);
    t->buf = NULL;
    t->buf_bytes = 0;
    free(t->sig);
    t->sig = NULL;
    t->n_sig = 0;
}

/* Empties the slot's adapter list: the model reads the weight alone again. */
static void target_detach(target *t) {
    if (t->run) {
        t->run->ad = NULL;
        t->run->n = 0;
    }
    free(t->ad);
    t->ad = NULL;
    free(t->rsig);
    t->rsig = NULL;
    t->n_rsig = 0;
}

static void free_stems(kn_lora_model *m) {
    for (int i = 0; i < m->n_stems; i++) free(m->stems[i].name);
    free(m->stems);
    m->stems = NULL;
    m->n_stems = 0;
}

void kn_lora_model_free(kn_lora_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) {
        target_restore(&m->t[i]);
        target_detach(&m->t[i]);
        free(m->t[i].key);
    }
    free(m->t);
    free_stems(m);
    free(m);
}

static int find_target(const kn_lora_model *m, const char *key) {
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->t[i].key, key) == 0) return i;
    return -1;
}

void kn_lora_model_set_runtime(kn_lora_model *m, int on) {
    if (m->runtime == !!on) return;
    /* every tensor back to its file view with no adapters: the next apply rebuilds the stack in the new mode */
    for (int i = 0; i < m->n; i++) {
        target_restore(&m->t[i]);
        target_detach(&m->t[i]);
    }
    m->runtime = !!on;
}

const kn_tensor *kn_lora_model_slot(const kn_lora_model *m, const char *key) {
    int i = find_target(m, key);
    return i < 0 ? NULL : m->t[i].slot;
}

static int cmp_stem(const void *a, const void *b) {
    const stem *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->target > y->target) - (x->target < y->target);
}

static int build_stems(kn_lora_model *m, kn_err *err) {
    free_stems(m);
    const kn_key_alias *rules = m->aliases;
    int n_rules = m->n_aliases;
    if (!(m->stems = calloc((size_t)m->n * (size_t)n_rules + 1, sizeof *m->stems)))
        return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    for (int i = 0; i < m->n; i++) {
        const char *key = m->t[i].key;
        size_t len = strlen(key);
        int is_weight = len > 7 && strcmp(key + len - 7, ".weight") == 0;
        size_t base = is_weight ? len - 7 : len;
        for (int r = 0; r < n_rules; r++) {
            if (!is_weight && !rules[r].any_key) continue;
            size_t plen = strlen(rules[r].prefix);
            char *s = malloc(plen + base + 1);
            if (!s) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
            memcpy(s, rules[r].prefix, plen);
            for (size_t k = 0; k < base; k++) s[plen + k] = rules[r].underscored && key[k] == '.' ? '_' : key[k];
            s[plen + base] = '\0';
            m->stems[m->n_stems++] = (stem){s, i};
        }
    }
    qsort(m->stems, (size_t)m->n_stems, sizeof *m->stems, cmp_stem);
    /* a stem two tensors produce maps to the first one registered */
    int w = 0;
    for (int i = 0; i < m->n_stems; i++) {
        if (w && strcmp(m->stems[w - 1].name, m->stems[i].name) == 0) {
            free(m->stems[i].name);
            continue;
        }
        m->stems[w++] = m->stems[i];
    }
    m->n_stems = w;
    m->stems_dirty = 0;
    return KN_OK;
}

/* Index of the stem equal to name[0, len), or -1. */
static int find_stem(const kn_lora_model *m, const char *name, size_t len) {
    int lo = 0, hi = m->n_stems - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const char *s = m->stems[mid].name;
        int c = strncmp(name, s, len);
        if (c == 0) c = s[len] ? -1 : 0;
        if (c == 0) return mid;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return -1;
}

/* ---- loading a LoRA file ---------------------------------------------------------- */

typedef struct group {
    int stem;
    int idx[R_COUNT]; /* file tensor index per role, -1 */
} group;

typedef struct loader {
    kn_lora *l;
    const kn_lora_model *m;
    char *used; /* per file tensor */
    kn_err *err;
} loader;

static const kn_tensor *ftensor(const loader *ld, int i) { return kn_st_at(ld->l->file, i); }

static int check_float(const loader *ld, int i) {
    const kn_tensor *t = ftensor(ld, i);
    if (!kn_dtype_is_float(t->dtype))
        return kn_fail(ld->err, KN_ERR_FORMAT, "%s: '%s' has dtype %s, LoRA factors must be float",
                       kn_st_path(ld->l->file), t->name, kn_dtype_name(t->dtype));
    return KN_OK;
}

/* Tensor i must be 2-D [r, c] (-1: any); errors name the file, the key and the target. */
static int factor2(const loader *ld, int i, int64_t r, int64_t c, const target *tg, const kn_tensor **out) {
    KN_TRY(check_float(ld, i));
    const kn_tensor *t = ftensor(ld, i);
    if (t->ndim != 2 || (r >= 0 && t->ne[0] != r) || (c >= 0 && t->ne[1] != c)) {
        char a[96], b[96];
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' is %s, expected [%lld, %lld] (-1: any) to patch '%s' %s",
                       kn_st_path(ld->l->file), t->name, kn_tensor_desc(t, a, sizeof a), (long long)r, (long long)c,
                       tg->key, kn_tensor_desc(&tg->orig, b, sizeof b));
    }
    *out = t;
    return KN_OK;
}

static int read_alpha(const loader *ld, int i, double *alpha) {
    KN_TRY(check_float(ld, i));
    const kn_tensor *t = ftensor(ld, i);
    if (kn_tensor_numel(t) != 1)
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' must be a scalar, has %lld values", kn_st_path(ld->l->file),
                       t->name, (long long)kn_tensor_numel(t));
    float v;
    kn_to_f32(&v, t->data, t->dtype, 1, t->scale);
    if (!isfinite(v))
        return kn_fail(ld->err, KN_ERR_FORMAT, "%s: '%s' is %g, alpha must be finite", kn_st_path(ld->l->file),
                       t->name, (double)v);
    *alpha = v;
    return KN_OK;
}

static int unsupported(const loader *ld, int i, const char *what) {
    return kn_fail(ld->err, KN_ERR_UNSUPPORTED, "%s: '%s': %s is not supported", kn_st_path(ld->l->file),
                   ftensor(ld, i)->name, what);
}

/* Marks the present roles [from, to] of g consumed. */
static void consume(loader *ld, const group *g, int from, int to) {
    for (int r = from; r <= to; r++)
        if (g->idx[r] >= 0) ld->used[g->idx[r]] = 1;
}

/* Records p for its target; a later patch of the same target replaces it (ComfyUI's patch dict). */
static void set_patch(kn_lora *l, const patch *p) {
    if (l->patch_of[p->target] >= 0) {
        l->p[l->patch_of[p->target]] = *p;
        return;
    }
    l->patch_of[p->target] = l->n;
    l->p[l->n++] = *p;
}

/* A LoRA/LoHa/LoKr/OFT adapter of group g, or kind -1 when none. */
static int adapter(loader *ld, const group *g, const target *tg, int has_alpha, double alpha, patch *p) {
    const int *ix = g->idx;
    int64_t O = tg->orig.ne[0], I = tg->orig.ndim == 2 ? tg->orig.ne[1] : -1;
    p->kind = (patch_kind)-1;
    int any = 0;
    for (int q = 0; q < N_PAIRS && !any; q++) {
        if (ix[R_UP + q] < 0 || ix[R_DOWN + q] < 0) continue;
        any = 1;
        if (ix[R_MID] >= 0) return unsupported(ld, ix[R_MID], "a Tucker (lora_mid) factor");
        KN_TRY(factor2(ld, ix[R_DOWN + q], -1, I, tg, &p->f[1]));
        KN_TRY(factor2(ld, ix[R_UP + q], O, p->f[1]->ne[0], tg, &p->f[0]));
        p->kind = P_LORA;
        p->scale = has_alpha ? alpha / (double)p->f[1]->ne[0] : 1.0;
        ld->used[ix[R_UP + q]] = ld->used[ix[R_DOWN + q]] = 1;
    }
    if (ix[R_W1A] >= 0 || ix[R_W1B] >= 0 || ix[R_W2A] >= 0 || ix[R_W2B] >= 0) {
        for (int r = R_W1A; r <= R_W2B; r++)
            if (ix[r] < 0)
                return kn_fail(ld->err, KN_ERR_FORMAT, "%s: LoHa '%s' lacks %s", kn_st_path(ld->l->file),
                               ld->m->stems[g->stem].name, role_suffix(r));
        if (ix[R_T1] >= 0 || ix[R_T2] >= 0) return unsupported(ld, ix[R_T1] >= 0 ? ix[R_T1] : ix[R_T2], "LoHa Tucker (hada_t*)");
        KN_TRY(factor2(ld, ix[R_W1B], -1, I, tg, &p->f[1]));
        KN_TRY(factor2(ld, ix[R_W1A], O, p->f[1]->ne[0], tg, &p->f[0]));
        KN_TRY(factor2(ld, ix[R_W2B], -1, I, tg, &p->f[3]));
        KN_TRY(factor2(ld, ix[R_W2A], O, p->f[3]->ne[0], tg, &p->f[2]));
        p->kind = P_LOHA;
        p->scale = has_alpha ? alpha / (double)p->f[1]->ne[0] : 1.0;
        consume(ld, g, R_W1A, R_W2B);
    }
    if (ix[R_K1] >= 0 || ix[R_K2] >= 0 || ix[R_K1A] >= 0 || ix[R_K2A] >= 0) {
        if (ix[R_KT2] >= 0) return unsupported(ld, ix[R_KT2], "LoKr Tucker (lokr_t2)");
        int64_t dims[2][2]; /* rows, cols of w1 and w2 */
        int64_t rank = 0;
        for (int k = 0; k < 2; k++) {
            int full = k ? R_K2 : R_K1, a = full + 1, b = full + 2;
            const kn_tensor **f = &p->f[3 * k];
            f[0] = f[1] = f[2] = NULL;
            if (ix[full] >= 0) {
                KN_TRY(factor2(ld, ix[full], -1, -1, tg, &f[0]));
                dims[k][0] = f[0]->ne[0];
                dims[k][1] = f[0]->ne[1];
            } else if (ix[a] >= 0 && ix[b] >= 0) {
                KN_TRY(factor2(ld, ix[b], -1, -1, tg, &f[2]));
                KN_TRY(factor2(ld, ix[a], -1, f[2]->ne[0], tg, &f[1]));
                dims[k][0] = f[1]->ne[0];
                dims[k][1] = f[2]->ne[1];
                rank = f[2]->ne[0]; /* w2's split rank wins over w1's (ComfyUI's `dim`) */
            } else {
                return kn_fail(ld->err, KN_ERR_FORMAT, "%s: LoKr '%s' lacks %s (or %s_a and %s_b)",
                               kn_st_path(ld->l->file), ld->m->stems[g->stem].name, k ? ".lokr_w2" : ".lokr_w1",
                               k ? ".lokr_w2" : ".lokr_w1", k ? ".lokr_w2" : ".lokr_w1");
            }
        }
        if (dims[0][0] * dims[1][0] != O || dims[0][1] * dims[1][1] != I) {
            char b[96];
            return kn_fail(ld->err, KN_ERR_SHAPE,
                           "%s: LoKr '%s' gives kron([%lld, %lld], [%lld, %lld]), which does not fit '%s' %s",
                           kn_st_path(ld->l->file), ld->m->stems[g->stem].name, (long long)dims[0][0],
                           (long long)dims[0][1], (long long)dims[1][0], (long long)dims[1][1], tg->key,
                           kn_tensor_desc(&tg->orig, b, sizeof b));
        }
        p->kind = P_LOKR;
        p->scale = has_alpha && rank ? alpha / (double)rank : 1.0;
        consume(ld, g, R_K1, R_K2B);
    }
    if (ix[R_OFT] >= 0) {
        KN_TRY(check_float(ld, ix[R_OFT]));
        const kn_tensor *b = ftensor(ld, ix[R_OFT]);
        if (b->ndim != 3 || b->ne[1] != b->ne[2] || b->ne[0] * b->ne[1] != O || I < 0) {
            char x[96], y[96];
            return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' is %s, expected [k, b, b] with k*b = %lld rows of '%s' %s",
                           kn_st_path(ld->l->file), b->name, kn_tensor_desc(b, x, sizeof x), (long long)O, tg->key,
                           kn_tensor_desc(&tg->orig, y, sizeof y));
        }
        if (ix[R_DORA] >= 0) return unsupported(ld, ix[R_DORA], "OFT with dora_scale");
        p->kind = P_OFT;
        p->f[0] = b;
        p->scale = has_alpha ? alpha : 0.0;
        ld->used[ix[R_OFT]] = 1;
    }
    if ((int)p->kind >= 0 && I < 0)
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' patches the 1-D tensor '%s'; only .diff/.set_weight can",
                       kn_st_path(ld->l->file), ld->m->stems[g->stem].name, tg->key);
    p->dora = NULL;
    if ((int)p->kind >= 0 && p->kind != P_OFT && ix[R_DORA] >= 0) {
        KN_TRY(check_float(ld, ix[R_DORA]));
        const kn_tensor *d = ftensor(ld, ix[R_DORA]);
        int64_t n = kn_tensor_numel(d);
        if (!((d->ne[0] == O && n == O) || (n == I && d->ne[0] == 1))) {
            char x[96], y[96];
            return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' is %s, expected [%lld, 1] or [1, %lld] for '%s' %s",
                           kn_st_path(ld->l->file), d->name, kn_tensor_desc(d, x, sizeof x), (long long)O,
                           (long long)I, tg->key, kn_tensor_desc(&tg->orig, y, sizeof y));
        }
        p->dora = d;
    }
    return KN_OK;
}

/* A whole-tensor patch (.diff, .w_norm, .set_weight, .diff_b, .b_norm) of target ti. */
static int whole(loader *ld, int i, int ti, patch_kind kind) {
    KN_TRY(check_float(ld, i));
    const kn_tensor *t = ftensor(ld, i);
    const target *tg = &ld->m->t[ti];
    int same = t->ndim == tg->orig.ndim;
    for (int d = 0; same && d < t->ndim; d++) same = t->ne[d] == tg->orig.ne[d];
    if (!same) {
        char a[96], b[96];
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' is %s, '%s' is %s", kn_st_path(ld->l->file), t->name,
                       kn_tensor_desc(t, a, sizeof a), tg->key, kn_tensor_desc(&tg->orig, b, sizeof b));
    }
    patch p = {.target = ti, .kind = kind, .f = {t}};
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
    return find_target(m, name);
}

static int load_group(loader *ld, const group *g) {
    int ti = ld->m->stems[g->stem].target;
    const target *tg = &ld->m->t[ti];
    double alpha = 0.0;
    int has_alpha = g->idx[R_ALPHA] >= 0;
    if (has_alpha) KN_TRY(read_alpha(ld, g->idx[R_ALPHA], &alpha));
    consume(ld, g, R_ALPHA, R_DORA);
    patch p = {.target = ti};
    KN_TRY(adapter(ld, g, tg, has_alpha, alpha, &p));
    if ((int)p.kind >= 0) set_patch(ld->l, &p);
    /* then, as in comfy.lora.load_lora, the whole-tensor entries (later ones replace earlier ones) */
    static const struct {
        int role;
        int on_bias;
        patch_kind kind;
    } wholes[] = {{R_WNORM, 0, P_DIFF}, {R_BNORM, 1, P_DIFF}, {R_DIFF, 0, P_DIFF}, {R_DIFFB, 1, P_DIFF},
                  {R_SET, 0, P_SET}};
    for (size_t k = 0; k < sizeof wholes / sizeof wholes[0]; k++) {
        int i = g->idx[wholes[k].role];
        if (i < 0) continue;
        int dst = wholes[k].on_bias ? bias_of(ld->m, ti) : ti;
        if (dst >= 0) KN_TRY(whole(ld, i, dst, wholes[k].kind));
    }
    return KN_OK;
}

static int map_file(loader *ld) {
    kn_lora *l = ld->l;
    int n = kn_st_count(l->file);
    group *gs = calloc((size_t)n + 1, sizeof *gs);
    int *group_of_stem = malloc(((size_t)ld->m->n_stems + 1) * sizeof *group_of_stem);
    int ng = 0, rc = KN_OK;
    if (!gs || !group_of_stem) rc = kn_fail(ld->err, KN_ERR_NOMEM, "lora: out of memory");
    for (int s = 0; !rc && s < ld->m->n_stems; s++) group_of_stem[s] = -1;
    for (int i = 0; !rc && i < n; i++) {
        const char *key = kn_st_at(l->file, i)->name;
        size_t len = strlen(key);
        for (int k = 0; k < N_SUFFIXES; k++) {
            size_t sl = strlen(suffixes[k].suffix);
            if (len <= sl || strcmp(key + len - sl, suffixes[k].suffix) != 0) continue;
            int s = find_stem(ld->m, key, len - sl);
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
    /* a patch per model tensor at most, plus a bias per group */
    if (!rc && !(l->p = calloc((size_t)ng * 2 + 1, sizeof *l->p))) rc = kn_fail(ld->err, KN_ERR_NOMEM, "lora: out of memory");
    for (int g = 0; !rc && g < ng; g++) rc = load_group(ld, &gs[g]);
    for (int i = 0; !rc && i < n; i++)
        if (!ld->used[i]) l->unloaded[l->n_unloaded++] = kn_st_at(l->file, i)->name;
    free(gs);
    free(group_of_stem);
    return rc;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int kn_lora_load(kn_lora **out, const char *path, kn_lora_model *m, kn_err *err) {
    *out = NULL;
    if (m->stems_dirty) KN_TRY(build_stems(m, err));
    kn_lora *l = calloc(1, sizeof *l);
    if (!l) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    l->model = m;
    l->serial = atomic_fetch_add(&next_serial, 1);
    int rc = kn_st_open(&l->file, path, err);
    int n = rc ? 0 : kn_st_count(l->file);
    loader ld = {l, m, NULL, err};
    if (!rc && (!(l->name = strdup(base_name(path))) || !(l->patch_of = malloc(((size_t)m->n + 1) * sizeof(int))) ||
                !(l->unloaded = calloc((size_t)n + 1, sizeof *l->unloaded)) || !(ld.used = calloc((size_t)n + 1, 1))))
        rc = kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    for (int i = 0; !rc && i < m->n; i++) l->patch_of[i] = -1;
    if (!rc) rc = map_file(&ld);
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
    kn_st_close(l->file);
    free(l->name);
    free(l->p);
    free(l->patch_of);
    free(l->unloaded);
    free(l);
}

const char *kn_lora_name(const kn_lora *l) { return l->name; }
int kn_lora_patch_count(const kn_lora *l) { return l->n; }
int kn_lora_tensor_count(const kn_lora *l) { return kn_st_count(l->file); }
int kn_lora_unloaded_count(const kn_lora *l) { return l->n_unloaded; }
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

/* ---- patch math (f32, ComfyUI's calculate_weight) ------------------------------------ */

/* A file tensor widened to a new f32 array (free()). */
static float *widen(const kn_tensor *t, kn_err *err) {
    size_t n = (size_t)kn_tensor_numel(t);
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        kn_fail(err, KN_ERR_NOMEM, "lora: out of memory widening '%s'", t->name ? t->name : "?");
        return NULL;
    }
    kn_to_f32(p, t->data, t->dtype, n, t->scale);
    return p;
}

/* w[i, :] += coef * sum_k a[r0 + i, k] b[k, :] for `rows` rows of w (a [O, r],
 * b [r, I], f32). Row by row rather than a GEMM call: with r << I the work is
 * r AXPYs over a row that stays in L1 against a b that stays in L2, in one
 * parallel region per patch (GEMM calls per panel spent 2/3 of the time in
 * thread barriers at rank 16-64). */
static void lowrank_axpy(float *w, const float *a, const float *b, int64_t r, int64_t r0, int64_t rows, int64_t I,
                         float coef) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        float *wi = w + i * I;
        for (int64_t k = 0; k < r; k++) {
            const float c = coef * a[(r0 + i) * r + k], *bk = b + k * I;
            for (int64_t j = 0; j < I; j++) wi[j] += c * bk[j];
        }
    }
}

/* C[m, n] = A[m, k] @ B[k, n]: the small LoKr factor products. */
static void small_matmul(const float *a, const float *b, float *c, int64_t m, int64_t k, int64_t n) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0.0;
            for (int64_t q = 0; q < k; q++) s += (double)a[i * k + q] * b[q * n + j];
            c[i * n + j] = (float)s;
        }
}

/* The additive patches' factors, widened once per application. */
typedef struct prep {
    float *a1, *b1, *a2, *b2; /* LORA: up, down; LOHA: w1a, w1b, w2a, w2b */
    float *k1, *k2;             /* LOKR: the composed factors */
    int64_t r1, r2, k1r, k1c, k2r, k2c;
    float *panel2; /* LOHA: the second factor's rows */
} prep;

static void prep_free(prep *q) {
    free(q->a1);
    free(q->b1);
    free(q->a2);
    free(q->b2);
    free(q->k1);
    free(q->k2);
    free(q->panel2);
}

/* A LoKr factor: the full tensor f[0], or f[1] @ f[2]. */
static float *lokr_factor(const kn_tensor *const *f, int64_t *rows, int64_t *cols, kn_err *err) {
    if (f[0]) {
        *rows = f[0]->ne[0];
        *cols = f[0]->ne[1];
        return widen(f[0], err);
    }
    *rows = f[1]->ne[0];
    *cols = f[2]->ne[1];
    float *a = widen(f[1], err), *b = a ? widen(f[2], err) : NULL;
    float *c = b ? malloc((size_t)(*rows * *cols) * sizeof *c + 1) : NULL;
    if (b && !c) kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    if (c) small_matmul(a, b, c, *rows, f[1]->ne[1], *cols);
    free(a);
    free(b);
    return c;
}

static int prep_init(prep *q, const patch *p, int64_t panel_rows, int64_t I, kn_err *err) {
    memset(q, 0, sizeof *q);
    switch (p->kind) {
    case P_LOHA:
        q->r2 = p->f[3]->ne[0];
        if (!(q->a2 = widen(p->f[2], err)) || !(q->b2 = widen(p->f[3], err))) return err->code;
        if (!(q->panel2 = malloc((size_t)(panel_rows * I) * sizeof(float))))
            return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
        /* fall through - the first factor pair is LoRA's */
    case P_LORA:
        q->r1 = p->f[1]->ne[0];
        if (!(q->a1 = widen(p->f[0], err)) || !(q->b1 = widen(p->f[1], err))) return err->code;
        return KN_OK;
    case P_LOKR:
        if (!(q->k1 = lokr_factor(&p->f[0], &q->k1r, &q->k1c, err)) ||
            !(q->k2 = lokr_factor(&p->f[3], &q->k2r, &q->k2c, err)))
            return err->code;
        return KN_OK;
    default: return KN_OK;
    }
}

/* Rows [r0, r0 + rows) of a LoHa or LoKr patch's unscaled delta. */
static void delta_rows(const patch *p, prep *q, int64_t r0, int64_t rows, int64_t I, float *out) {
    switch (p->kind) {
    case P_LOHA:
        memset(out, 0, (size_t)(rows * I) * sizeof *out);
        memset(q->panel2, 0, (size_t)(rows * I) * sizeof *out);
        lowrank_axpy(out, q->a1, q->b1, q->r1, r0, rows, I, 1.0f);
        lowrank_axpy(q->panel2, q->a2, q->b2, q->r2, r0, rows, I, 1.0f);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < rows * I; i++) out[i] *= q->panel2[i];
        return;
    case P_LOKR:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            int64_t row = r0 + i;
            const float *k1 = q->k1 + (row / q->k2r) * q->k1c, *k2 = q->k2 + (row % q->k2r) * q->k2c;
            for (int64_t j = 0; j < I; j++) out[i * I + j] = k1[j / q->k2c] * k2[j % q->k2c];
        }
        return;
    default: return;
    }
}

/* weight_decompose: w holds W1 = W0 + scale * delta; w0 is W0. */
static void dora_finish(float *w, const float *w0, const kn_tensor *dora, int64_t O, int64_t I, double s, float *dv,
                        double *norm) {
    int out_axis = dora->ne[0] == O;
    kn_to_f32(dv, dora->data, dora->dtype, (size_t)(out_axis ? O : I), dora->scale);
    if (out_axis) { /* ComfyUI norms the original W on this branch */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < O; i++) {
            double acc = 0.0;
            for (int64_t j = 0; j < I; j++) acc += (double)w0[i * I + j] * w0[i * I + j];
            norm[i] = sqrt(acc);
        }
    } else {
        for (int64_t j = 0; j < I; j++) norm[j] = 0.0;
        for (int64_t i = 0; i < O; i++)
            for (int64_t j = 0; j < I; j++) norm[j] += (double)w[i * I + j] * w[i * I + j];
        for (int64_t j = 0; j < I; j++) norm[j] = sqrt(norm[j]);
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < O; i++)
        for (int64_t j = 0; j < I; j++) {
            int64_t k = out_axis ? i : j;
            float w2 = w[i * I + j] * (float)(dv[k] / (norm[k] + FLT_EPSILON));
            w[i * I + j] = s == 1.0 ? w2 : (float)(w0[i * I + j] + s * (w2 - w0[i * I + j]));
        }
}

/* Invert the n x n matrix a in place (Gauss-Jordan, partial pivoting). */
static int invert(double *a, int64_t n, double *inv) {
    for (int64_t i = 0; i < n * n; i++) inv[i] = (i / n == i % n);
    for (int64_t c = 0; c < n; c++) {
        int64_t piv = c;
        for (int64_t r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[piv * n + c])) piv = r;
        if (a[piv * n + c] == 0.0) return -1;
        for (int64_t k = 0; k < n; k++) {
            double t = a[c * n + k];
            a[c * n + k] = a[piv * n + k];
            a[piv * n + k] = t;
            t = inv[c * n + k];
            inv[c * n + k] = inv[piv * n + k];
            inv[piv * n + k] = t;
        }
        double d = a[c * n + c];
        for (int64_t k = 0; k < n; k++) a[c * n + k] /= d, inv[c * n + k] /= d;
        for (int64_t r = 0; r < n; r++) {
            if (r == c || a[r * n + c] == 0.0) continue;
            double f = a[r * n + c];
            for (int64_t k = 0; k < n; k++) a[r * n + k] -= f * a[c * n + k], inv[r * n + k] -= f * inv[c * n + k];
        }
    }
    return 0;
}

/* LyCORIS OFT as ComfyUI applies it: W_k += s^2 (R_k - I)^T W_k, R = (I + Q)(I - Q)^-1. */
static int apply_oft(const patch *p, float *w, int64_t I, double s, kn_err *err) {
    const kn_tensor *bt = p->f[0];
    int64_t K = bt->ne[0], b = bt->ne[1];
    float *blk = widen(bt, err);
    double *q = malloc((size_t)(4 * b * b) * sizeof *q), *tmp = malloc((size_t)b * sizeof *tmp);
    if (!blk || !q || !tmp) {
        free(blk), free(q), free(tmp);
        return err->code ? err->code : kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    }
    double norm = 0.0;
    for (int64_t k = 0; k < K; k++)
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < b; j++) {
                double v = (double)blk[(k * b + i) * b + j] - blk[(k * b + j) * b + i];
                norm += v * v;
            }
    norm = sqrt(norm) + 1e-8;
    double lim = p->scale > 0.0 && norm > p->scale ? p->scale / norm : 1.0;
    double *qm = q, *ipq = q + b * b, *imq = q + 2 * b * b, *inv = q + 3 * b * b;
    int rc = KN_OK;
    for (int64_t k = 0; k < K && !rc; k++) {
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < b; j++) {
                qm[i * b + j] = lim * ((double)blk[(k * b + i) * b + j] - blk[(k * b + j) * b + i]);
                ipq[i * b + j] = (i == j) + qm[i * b + j];
                imq[i * b + j] = (i == j) - qm[i * b + j];
            }
        if (invert(imq, b, inv)) {
            rc = kn_fail(err, KN_ERR_FORMAT, "lora: '%s' block %lld: I - Q is singular", bt->name, (long long)k);
            break;
        }
        /* qm <- R - I */
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < b; j++) {
                double acc = 0.0;
                for (int64_t t = 0; t < b; t++) acc += ipq[i * b + t] * inv[t * b + j];
                qm[i * b + j] = acc - (i == j);
            }
        float *wk = w + k * b * I;
        for (int64_t c = 0; c < I; c++) {
            for (int64_t m = 0; m < b; m++) {
                double acc = 0.0;
                for (int64_t n = 0; n < b; n++) acc += qm[n * b + m] * wk[n * I + c];
                tmp[m] = acc;
            }
            for (int64_t m = 0; m < b; m++) wk[m * I + c] = (float)(wk[m * I + c] + s * s * tmp[m]);
        }
    }
    free(blk), free(q), free(tmp);
    return rc;
}

/* Scratch shared by the patches of one application. */
typedef struct work {
    float *panel, *w0, *dv;
    double *norm;
    size_t panel_n, w0_n, dv_n, norm_n;
} work;

static int grow(void **p, size_t *have, size_t need, size_t elem, kn_err *err) {
    if (*have >= need) return KN_OK;
    void *q = realloc(*p, need * elem);
    if (!q) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory (%zu bytes)", need * elem);
    *p = q;
    *have = need;
    return KN_OK;
}

/* One patch on w [O, I] (f32) at strength s. */
static int apply_patch(work *wk, const patch *p, float *w, int64_t O, int64_t I, double s, kn_err *err) {
    int64_t n = O * I;
    if (p->kind == P_OFT) return apply_oft(p, w, I, s, err);
    if (p->kind == P_DIFF || p->kind == P_SET) {
        float *d = widen(p->f[0], err);
        if (!d) return err->code;
        if (p->kind == P_SET) memcpy(w, d, (size_t)n * sizeof *w);
        else
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < n; i++) w[i] += (float)s * d[i];
        free(d);
        return KN_OK;
    }
    int64_t panel_rows = PANEL_FLOATS / I > 0 ? PANEL_FLOATS / I : 1;
    if (panel_rows > O) panel_rows = O;
    if (p->dora) {
        KN_TRY(grow((void **)&wk->w0, &wk->w0_n, (size_t)n, sizeof(float), err));
        KN_TRY(grow((void **)&wk->dv, &wk->dv_n, (size_t)(O > I ? O : I), sizeof(float), err));
        KN_TRY(grow((void **)&wk->norm, &wk->norm_n, (size_t)(O > I ? O : I), sizeof(double), err));
        memcpy(wk->w0, w, (size_t)n * sizeof *w);
    }
    /* DoRA scales the delta by alpha only; the strength enters in dora_finish */
    float coef = (float)(p->dora ? p->scale : s * p->scale);
    prep q;
    int rc = prep_init(&q, p, panel_rows, I, err);
    if (!rc && p->kind == P_LORA) lowrank_axpy(w, q.a1, q.b1, q.r1, 0, O, I, coef);
    if (!rc && p->kind != P_LORA)
        rc = grow((void **)&wk->panel, &wk->panel_n, (size_t)(panel_rows * I), sizeof(float), err);
    for (int64_t r0 = 0; !rc && p->kind != P_LORA && r0 < O; r0 += panel_rows) {
        int64_t rows = O - r0 < panel_rows ? O - r0 : panel_rows;
        delta_rows(p, &q, r0, rows, I, wk->panel);
        float *dst = w + r0 * I;
        const float *src = wk->panel;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < rows * I; i++) dst[i] += coef * src[i];
    }
    prep_free(&q);
    if (!rc && p->dora) dora_finish(w, wk->w0, p->dora, O, I, s, wk->dv, wk->norm);
    return rc;
}

/* ---- applying a stack ----------------------------------------------------------------- */

static kn_dtype patched_dtype(kn_dtype base) {
    return base == KN_F32 || base == KN_F16 || base == KN_BF16 ? base : KN_F32;
}

/* Recompute target t from its original view plus the listed patches. */
static int recompute(work *wk, target *t, const kn_lora_use *stack, const int *which, int n_which, float **f32,
                     size_t *f32_n, kn_err *err) {
    kn_dtype dt = patched_dtype(t->orig.dtype);
    int64_t n = kn_tensor_numel(&t->orig);
    int64_t O = t->orig.ne[0], I = t->orig.ndim == 2 ? t->orig.ne[1] : 1;
    size_t bytes = (size_t)n * kn_dtype_size(dt);
    /* the slot goes back to the file view first: a failure below leaves it there */
    *t->slot = t->orig;
    if (t->buf_bytes != bytes) {
        free(t->buf);
        t->buf_bytes = 0;
        if (!(t->buf = malloc(bytes ? bytes : 1))) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory for '%s'", t->key);
        t->buf_bytes = bytes;
    }
    float *w = (float *)t->buf;
    if (dt != KN_F32) {
        KN_TRY(grow((void **)f32, f32_n, (size_t)n, sizeof(float), err));
        w = *f32;
    }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < n; c += CHUNK)
        kn_to_f32(w + c, (const char *)t->orig.data + c * (int64_t)kn_dtype_size(t->orig.dtype), t->orig.dtype,
                  (size_t)(n - c < CHUNK ? n - c : CHUNK), t->orig.scale);
    for (int k = 0; k < n_which; k++) {
        const kn_lora *l = stack[which[k]].lora;
        const patch *p = &l->p[l->patch_of[t - l->model->t]];
        int rc = apply_patch(wk, p, w, O, I, stack[which[k]].strength, err);
        if (rc) return kn_err_wrap(err, "lora '%s' on '%s'", l->name, t->key);
    }
    if (dt != KN_F32) {
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < n; c += CHUNK)
            kn_from_f32((char *)t->buf + c * (int64_t)kn_dtype_size(dt), dt, w + c,
                        (size_t)(n - c < CHUNK ? n - c : CHUNK));
    }
    kn_tensor v = kn_tensor_make(dt, KN_DEV_CPU, t->buf, t->orig.ndim, t->orig.ne);
    v.name = t->orig.name;
    *t->slot = v;
    return KN_OK;
}

/* A plain LoRA (no DoRA) is the only adapter kind that stays y += s B(A x) at
 * run time; the others change W in ways a low-rank term cannot express. */
static int runtime_kind(const patch *p) { return p->kind == P_LORA && !p->dora; }

/* Kinds whose result depends on the weight they are applied to: a plain LoRA
 * before one of them in a stack must be merged (it changes their input). */
static int reads_weight(const patch *p) { return p->dora || p->kind == P_OFT || p->kind == P_SET; }

/* The patch stack entry k puts on target ti. */
static const patch *patch_at(const kn_lora_use *stack, int k, int ti) {
    const kn_lora *l = stack[k].lora;
    return &l->p[l->patch_of[ti]];
}

/* Points target ti's adapter list at the listed plain LoRAs (none: detach). */
static int attach(target *t, int ti, const kn_lora_use *stack, const int *which, const applied *sig, int n,
                  kn_err *err) {
    target_detach(t);
    if (!n) return KN_OK;
    if (!(t->ad = malloc((size_t)n * sizeof *t->ad)) || !(t->rsig = malloc((size_t)n * sizeof *t->rsig))) {
        target_detach(t);
        return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    }
    for (int k = 0; k < n; k++) {
        const patch *p = patch_at(stack, which[k], ti);
        t->ad[k] = (kn_lora_adapter){p->f[1], p->f[0], (float)(stack[which[k]].strength * p->scale)};
    }
    memcpy(t->rsig, sig, (size_t)n * sizeof *sig);
    t->n_rsig = n;
    t->run->ad = t->ad;
    t->run->n = n;
    return KN_OK;
}

static int same_sig(const applied *a, int na, const applied *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

int kn_lora_model_apply(kn_lora_model *m, const kn_lora_use *stack, int n, kn_lora_apply_stats *stats,
                        kn_err *err) {
    kn_lora_apply_stats st = {0};
    for (int k = 0; k < n; k++)
        if (!stack[k].lora || stack[k].lora->model != m || !isfinite(stack[k].strength))
            return kn_fail(err, KN_ERR_INVALID, "lora: stack entry %d is not a LoRA loaded for this model with a finite strength", k);
    work wk = {0};
    /* per target: the entries merged into its buffer, then those kept as runtime adapters */
    int *which = malloc(((size_t)2 * n + 1) * sizeof *which), *rwhich = which ? which + n : NULL;
    applied *sig = malloc(((size_t)2 * n + 1) * sizeof *sig), *rsig = sig ? sig + n : NULL;
    float *f32 = NULL;
    size_t f32_n = 0;
    int rc = which && sig ? KN_OK : kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
    for (int i = 0; !rc && i < m->n; i++) {
        target *t = &m->t[i];
        int runtime = m->runtime && t->run, cut = -1;
        for (int k = 0; runtime && k < n; k++)
            if (stack[k].lora->patch_of[i] >= 0 && reads_weight(patch_at(stack, k, i))) cut = k;
        int nw = 0, nr = 0;
        for (int k = 0; k < n; k++) {
            if (stack[k].lora->patch_of[i] < 0) continue;
            applied a = {stack[k].lora->serial, stack[k].strength};
            if (runtime && k > cut && runtime_kind(patch_at(stack, k, i))) {
                rwhich[nr] = k;
                rsig[nr++] = a;
            } else {
                which[nw] = k;
                sig[nw++] = a;
            }
        }
        int same = same_sig(sig, nw, t->sig, t->n_sig), rsame = same_sig(rsig, nr, t->rsig, t->n_rsig);
        if (!rsame) {
            if ((rc = attach(t, i, stack, rwhich, rsig, nr, err))) break;
            if (nr) st.attached++;
            else st.detached++;
        }
        if (same) {
            st.kept += (nw > 0 || nr > 0) && rsame;
            continue;
        }
        if (nw == 0) {
            target_restore(t);
            st.restored++;
            continue;
        }
        applied *keep = malloc((size_t)nw * sizeof *keep);
        if (!keep) {
            rc = kn_fail(err, KN_ERR_NOMEM, "lora: out of memory");
            break;
        }
        memcpy(keep, sig, (size_t)nw * sizeof *keep);
        free(t->sig);
        t->sig = NULL;
        t->n_sig = 0;
        if ((rc = recompute(&wk, t, stack, which, nw, &f32, &f32_n, err))) {
            free(keep);
            target_restore(t);
            break;
        }
        t->sig = keep;
        t->n_sig = nw;
        st.recomputed++;
    }
    free(wk.panel), free(wk.w0), free(wk.dv), free(wk.norm);
    free(f32), free(which), free(sig);
    if (stats) *stats = st;
    return rc;
}

int kn_lora_model_weight(const kn_lora_model *m, const char *key, kn_tensor *out, kn_err *err) {
    int i = find_target(m, key);
    if (i < 0) return kn_fail(err, KN_ERR_NOT_FOUND, "lora: no weight '%s' in the model's table", key);
    const target *t = &m->t[i];
    const kn_tensor *s = t->slot;
    int64_t n = kn_tensor_numel(s), O = s->ne[0], I = s->ndim == 2 ? s->ne[1] : 1;
    float *w = malloc((size_t)(n ? n : 1) * sizeof *w);
    if (!w) return kn_fail(err, KN_ERR_NOMEM, "lora: out of memory for '%s'", key);
    if (kn_tensor_new(out, patched_dtype(t->orig.dtype), KN_DEV_CPU, s->ndim, s->ne, err)) {
        free(w);
        return err->code;
    }
    kn_to_f32(w, s->data, s->dtype, (size_t)n, s->scale);
    /* the same f32 sum and single rounding as a merge of these adapters */
    int rc = KN_OK;
    for (int k = 0; !rc && k < t->n_rsig; k++) {
        const kn_lora_adapter *a = &t->ad[k];
        float *up = widen(a->up, err), *down = up ? widen(a->down, err) : NULL;
        if (down) lowrank_axpy(w, up, down, a->down->ne[0], 0, O, I, a->scale);
        else rc = err->code;
        free(up), free(down);
    }
    if (!rc) {
        kn_from_f32(out->data, out->dtype, w, (size_t)n);
        out->name = t->orig.name;
    } else {
        kn_tensor_free(out);
    }
    free(w);
    return rc;
}
