/* torch's CPU normal sampling, ComfyUI's prepare_noise and its sampler noise sources.
 *
 * Bit-exactness needs torch's exact operation order. GCC compiles this file in
 * ISO C mode (-std=c11), which never fuses a*b+c on its own; fused steps of
 * torch's AVX2 kernel are written as explicit fmaf(), and every other step is
 * a statement of its own so that compilers which contract within one
 * expression (clang) cannot fuse it either. */
#include "pipelines/sampling/noise.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- mt19937, seeded and stepped like at::mt19937 ----------------------------- */

void kn_torch_rng_seed(kn_torch_rng *g, uint64_t seed) {
    g->state[0] = (uint32_t)seed;
    for (uint32_t i = 1; i < KN_MT19937_N; i++)
        g->state[i] = 1812433253u * (g->state[i - 1] ^ (g->state[i - 1] >> 30)) + i;
    g->next = KN_MT19937_N;
    g->has_normal = 0;
    g->normal = 0.0;
}

static inline uint32_t mt_mix(uint32_t upper, uint32_t lower, uint32_t far) {
    uint32_t y = (upper & 0x80000000u) | (lower & 0x7fffffffu);
    return far ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
}

/* In place: entries past the end wrap to ones this pass already updated, as in MT19937. */
static void mt_twist(kn_torch_rng *g) {
    uint32_t *s = g->state;
    const int n = KN_MT19937_N, m = 397;
    int i = 0;
    for (; i < n - m; i++) s[i] = mt_mix(s[i], s[i + 1], s[i + m]);
    for (; i < n - 1; i++) s[i] = mt_mix(s[i], s[i + 1], s[i + m - n]);
    s[n - 1] = mt_mix(s[n - 1], s[0], s[m - 1]);
    g->next = 0;
}

uint32_t kn_torch_rng_u32(kn_torch_rng *g) {
    if (g->next == KN_MT19937_N) mt_twist(g);
    uint32_t y = g->state[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* uniform_real_distribution<float>(0, 1): 24 random bits, exact in float. */
static float uniform_f32(kn_torch_rng *g) {
    return (float)(kn_torch_rng_u32(g) & 0xffffffu) * 0x1p-24f;
}

/* uniform_real_distribution<double>(0, 1) from random64() = first << 32 | second. */
static double uniform_f64(kn_torch_rng *g) {
    uint64_t hi = kn_torch_rng_u32(g);
    uint64_t lo = kn_torch_rng_u32(g);
    return (double)(((hi << 32) | lo) & ((UINT64_C(1) << 53) - 1)) * 0x1p-53;
}

/* ---- torch's AVX2 Box-Muller math: avx_mathfun.h as GCC compiles it ------------ */
/* The constants are double literals stored as float, as in avx_mathfun.h. */

/* log256_ps for x in (0, 1]. */
static inline float cephes_logf(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float e = (float)((int32_t)(bits >> 23) - 0x7f);
    e = e + 1.0f;
    bits = (bits & ~0x7f800000u) | 0x3f000000u; /* mantissa with 0.5's exponent: [0.5, 1) */
    memcpy(&x, &bits, sizeof x);
    int below = x < (float)0.707106781186547524;
    float tmp = below ? x : 0.0f;
    x = x - 1.0f;
    e = e - (below ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = fmaf((float)7.0376836292E-2, x, (float)-1.1514610310E-1);
    y = fmaf(y, x, (float)1.1676998740E-1);
    y = fmaf(y, x, (float)-1.2420140846E-1);
    y = fmaf(y, x, (float)1.4249322787E-1);
    y = fmaf(y, x, (float)-1.6668057665E-1);
    y = fmaf(y, x, (float)2.0000714765E-1);
    y = fmaf(y, x, (float)-2.4999993993E-1);
    y = fmaf(y, x, (float)3.3333331174E-1);
    y = y * x;
    float eq1 = e * (float)-2.12194440e-4;
    y = fmaf(y, z, eq1);
    float half_z = z * 0.5f;
    y = y - half_z;
    float eq2 = e * 0.693359375f; /* exact: whether GCC fused it does not matter */
    x = x + y;
    return x + eq2;
}

static inline float flip_sign(float v, int flip) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    bits ^= (uint32_t)(flip != 0) << 31;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* sincos256_ps for x >= 0 (theta = 2 pi u). */
static inline void cephes_sincosf(float x, float *s, float *c) {
    float y = x * (float)1.27323954473516; /* 4 / pi */
    int32_t j = (int32_t)y;
    j = (j + 1) & ~1;
    y = (float)j;
    int sin_poly = (j & 2) == 0; /* which polynomial is the sine */
    x = fmaf(y, (float)-0.78515625, x);
    x = fmaf(y, (float)-2.4187564849853515625e-4, x);
    x = fmaf(y, (float)-3.77489497744594108e-8, x);
    float z = x * x;
    float yc = fmaf((float)2.443315711809948E-005, z, (float)-1.388731625493765E-003);
    yc = fmaf(yc, z, (float)4.166664568298827E-002);
    yc = yc * z;
    float half_z = z * 0.5f;
    yc = fmaf(yc, z, -half_z);
    yc = yc + 1.0f;
    float ys = fmaf((float)-1.9515295891E-4, z, (float)8.3321608736E-3);
    ys = fmaf(ys, z, (float)-1.6666654611E-1);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    /* the kernel selects with masks and adds: keep its +0.0 terms (they turn -0 into +0) */
    float sin2 = sin_poly ? ys : 0.0f;
    float sin1 = sin_poly ? 0.0f : yc;
    float cos2 = ys - sin2;
    float cos1 = yc - sin1;
    *s = flip_sign(sin1 + sin2, j & 4);
    *c = flip_sign(cos1 + cos2, ((j - 2) & 4) == 0);
}

/* normal_fill_16(_AVX2): lanes j and j + 8 of a block of 16 uniforms become a Box-Muller pair.
 * The result's "* std + mean" (1 and 0) only turns -0 into +0: the "+ 0.0f". */
static void box_muller16_avx2(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float lg = cephes_logf(u1);
        float theta = 6.2831855f * u2; /* _mm256_set1_ps(2 pi) */
        float sn, cs;
        cephes_sincosf(theta, &sn, &cs);
        float m2lg = -2.0f * lg;
        float radius = sqrtf(m2lg);
        float n1 = radius * cs;
        float n2 = radius * sn;
        d[j] = n1 + 0.0f;
        d[j + 8] = n2 + 0.0f;
    }
}

static void box_muller16_scalar(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = (float)(2.0 * 3.14159265358979323846 * (double)u2);
        float n1 = radius * cosf(theta);
        float n2 = radius * sinf(theta);
        d[j] = n1 + 0.0f;
        d[j + 8] = n2 + 0.0f;
    }
}

static void box_muller16(float *d, kn_randn_path path) {
    if (path == KN_RANDN_AVX2)
        box_muller16_avx2(d);
    else
        box_muller16_scalar(d);
}

/* at::normal_distribution<double>(0, 1) as torch 1.13 computes it, with the generator's cache.
 * (Later torch writes log1p(-u2) for log(1 - u2): the same value but for rare last bits.) */
static double normal_f64(kn_torch_rng *g) {
    if (g->has_normal) {
        g->has_normal = 0;
        return g->normal;
    }
    double u1 = uniform_f64(g);
    double u2 = uniform_f64(g);
    double r = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->normal = r * sin(theta);
    g->has_normal = 1;
    return r * cos(theta);
}

/* Values drawn between looks at the cancel flag: a multiple of 16 (whole
 * Box-Muller blocks), some milliseconds of work. */
#define RANDN_CHUNK ((int64_t)1 << 20)

static int cancelled(const atomic_int *cancel) { return cancel && atomic_load(cancel); }

/* kn_torch_randn, giving up (1) between chunks once *cancel is set; out is then partly written. */
static int randn(kn_torch_rng *g, float *out, int64_t n, kn_randn_path path, const atomic_int *cancel) {
    if (n < 16) { /* torch's per-element path for small (or strided) tensors */
        for (int64_t i = 0; i < n; i++) out[i] = (float)normal_f64(g);
        return 0;
    }
    for (int64_t c = 0; c < n; c += RANDN_CHUNK) {
        if (cancelled(cancel)) return 1;
        for (int64_t i = c, end = c + RANDN_CHUNK < n ? c + RANDN_CHUNK : n; i < end; i++) out[i] = uniform_f32(g);
    }
    /* the blocks are independent once the uniforms are drawn */
    const int64_t blocks = n / 16 * 16;
    for (int64_t c = 0; c < blocks; c += RANDN_CHUNK) {
        if (cancelled(cancel)) return 1;
        const int64_t end = c + RANDN_CHUNK < blocks ? c + RANDN_CHUNK : blocks;
#pragma omp parallel for schedule(static) if (end - c >= (1 << 16))
        for (int64_t i = c; i < end; i += 16) box_muller16(out + i, path);
    }
    if (n % 16) { /* torch redraws the last 16 slots, overlapping the last full block */
        for (int64_t i = n - 16; i < n; i++) out[i] = uniform_f32(g);
        box_muller16(out + n - 16, path);
    }
    return 0;
}

void kn_torch_randn(kn_torch_rng *g, float *out, int64_t n, kn_randn_path path) { randn(g, out, n, path, NULL); }

static int check_f32_cpu(const kn_tensor *t, const char *what, kn_err *err) {
    char d[96];
    if (t->dtype != KN_F32 || t->device != KN_DEV_CPU || !kn_tensor_is_contiguous(t) || t->ndim < 1)
        return kn_fail(err, KN_ERR_SHAPE, "%s must be a contiguous F32 CPU tensor, got %s", what,
                       kn_tensor_desc(t, d, sizeof d));
    return KN_OK;
}

int kn_prepare_noise(kn_tensor *noise, uint64_t seed, const int64_t *batch_index, int n_index,
                     kn_randn_path path, const atomic_int *cancel, kn_err *err) {
    int rc = check_f32_cpu(noise, "prepare_noise: noise", err);
    if (rc) return rc;
    kn_torch_rng g;
    kn_torch_rng_seed(&g, seed);
    float *data = noise->data;
    int64_t numel = kn_tensor_numel(noise);
    if (!batch_index)
        return randn(&g, data, numel, path, cancel) ? kn_fail(err, KN_ERR_CANCELLED, "prepare_noise: interrupted")
                                                    : KN_OK;
    int64_t batch = noise->ne[0], item = batch ? numel / batch : 0, last = -1;
    const int64_t max_index = 1 << 16; /* ComfyUI's batches stay far below; a bigger index only burns time */
    if (n_index != batch)
        return kn_fail(err, KN_ERR_SHAPE, "prepare_noise: %d batch_index entries for a batch of %lld", n_index,
                       (long long)batch);
    for (int k = 0; k < n_index; k++) {
        if (batch_index[k] < 0 || batch_index[k] > max_index)
            return kn_fail(err, KN_ERR_INVALID, "prepare_noise: batch_index[%d] = %lld is outside [0, %lld]", k,
                           (long long)batch_index[k], (long long)max_index);
        if (batch_index[k] > last) last = batch_index[k];
    }
    float *draw = malloc((size_t)(item ? item : 1) * sizeof *draw);
    if (!draw) return kn_fail(err, KN_ERR_NOMEM, "prepare_noise: out of memory for %lld values", (long long)item);
    int stop = 0;
    for (int64_t i = 0; !stop && i <= last; i++) {
        stop = randn(&g, draw, item, path, cancel);
        for (int k = 0; !stop && k < n_index; k++)
            if (batch_index[k] == i) memcpy(data + k * item, draw, (size_t)item * sizeof *draw);
    }
    free(draw);
    return stop ? kn_fail(err, KN_ERR_CANCELLED, "prepare_noise: interrupted") : KN_OK;
}

/* ---- default_noise_sampler ------------------------------------------------------ */

typedef struct default_noise {
    kn_noise_source base;
    kn_randn_path path;
    kn_torch_rng rng;
} default_noise;

static int default_draw(kn_noise_source *src, float sigma, float sigma_next, kn_tensor *out, kn_err *err) {
    default_noise *d = (default_noise *)src;
    int rc = check_f32_cpu(out, "sampler noise", err);
    if (rc) return rc;
    kn_torch_randn(&d->rng, out->data, kn_tensor_numel(out), d->path);
    (void)sigma, (void)sigma_next;
    return KN_OK;
}

static void default_destroy(kn_noise_source *src) {
    free(src);
}

int kn_noise_default_new(kn_noise_source **out, uint64_t seed, kn_randn_path path, kn_err *err) {
    default_noise *d = calloc(1, sizeof *d);
    if (!d) return kn_fail(err, KN_ERR_NOMEM, "sampler noise: out of memory");
    d->base.draw = default_draw;
    d->base.destroy = default_destroy;
    d->path = path;
    kn_torch_rng_seed(&d->rng, seed + 1); /* ComfyUI adds 1 when x is on the CPU */
    *out = &d->base;
    return KN_OK;
}

/* ---- torchsde BrownianTree ---------------------------------------------------------- */

/* numpy.random.SeedSequence(entropy_words, pool_size=24).generate_state(1)[0]. */
#define SS_POOL 24
static uint32_t ss_hashmix(uint32_t v, uint32_t *hash_const) {
    v ^= *hash_const;
    *hash_const *= 0x931e8875u;
    v *= *hash_const;
    return v ^ (v >> 16);
}

static uint32_t ss_mix(uint32_t x, uint32_t y) {
    uint32_t r = 0xca01f9ddu * x - 0x4973f715u * y;
    return r ^ (r >> 16);
}

static uint32_t seed_sequence_word0(const uint32_t *entropy, int n) {
    uint32_t pool[SS_POOL], hc = 0x43b0d7e5u;
    for (int i = 0; i < SS_POOL; i++) pool[i] = ss_hashmix(i < n ? entropy[i] : 0u, &hc);
    for (int src = 0; src < SS_POOL; src++)
        for (int dst = 0; dst < SS_POOL; dst++)
            if (src != dst) pool[dst] = ss_mix(pool[dst], ss_hashmix(pool[src], &hc));
    for (int src = SS_POOL; src < n; src++)
        for (int dst = 0; dst < SS_POOL; dst++) pool[dst] = ss_mix(pool[dst], ss_hashmix(entropy[src], &hc));
    uint32_t h = 0x8b51f9ddu, v = pool[0] ^ h;
    h *= 0x58f38dedu;
    v *= h;
    return v ^ (v >> 16);
}

/* An integer as numpy's _int_to_uint32_array: 32-bit words, lowest first; 0 is one word. */
static int u64_words(uint64_t v, uint32_t *w) {
    w[0] = (uint32_t)v;
    if (v >> 32) {
        w[1] = (uint32_t)(v >> 32);
        return 2;
    }
    return 1;
}

/* torchsde rounds every time to round(t, 6) (tol 1e-6): Python's correctly rounded
 * decimal rounding, which printf's %.6f and strtod reproduce exactly. */
static double round6(double t) {
    char buf[512];
    snprintf(buf, sizeof buf, "%.6f", t);
    return strtod(buf, NULL);
}

#define BT_MAX_DEPTH 62 /* spawn keys stay below 2^63; 1e-6 resolution needs ~20 levels per unit */

typedef struct bt_node {
    double start, end, mid; /* rounded times; mid once split */
    uint64_t key;           /* SeedSequence spawn key: 2 * parent's + (right child) */
    int depth, parent, left, right, is_left;
    uint32_t seed; /* of the noise bridging this node's children (once split) */
    int slot;      /* cache slot holding this node's W, or -1 */
} bt_node;

/* Node increments are recomputed from the root on demand, as in torchsde, and a
 * cache keeps the recent ones (torchsde: an LRU of 45). One bridge yields both
 * children (right = W - left), so both are kept: the next query, which ends where
 * this one starts, then finds the nodes along their shared boundary. */
#define BT_SLOTS 64

typedef struct bt_slot {
    int node; /* -1: free */
    uint64_t used;
    float *w;
} bt_slot;

typedef struct brownian {
    kn_noise_source base;
    kn_randn_path path;
    int64_t numel;
    uint32_t entropy[2];
    int n_entropy;
    bt_node *nodes;
    int n_nodes, cap;
    float *root_w, *noise;
    bt_slot slots[BT_SLOTS];
    uint64_t clock;
    double stale_from; /* the current query's end */
} brownian;

/* Appends a node; its index goes to *index. */
static int bt_add_node(brownian *b, double start, double end, int parent, int is_left, int *index, kn_err *err) {
    if (b->n_nodes == b->cap) {
        int cap = b->cap ? 2 * b->cap : 64;
        bt_node *n = realloc(b->nodes, (size_t)cap * sizeof *n);
        if (!n) return kn_fail(err, KN_ERR_NOMEM, "brownian tree: out of memory");
        b->nodes = n;
        b->cap = cap;
    }
    bt_node *n = &b->nodes[b->n_nodes];
    *n = (bt_node){round6(start), round6(end), 0.0, 0, 0, parent, -1, -1, is_left, 0, -1};
    if (parent >= 0) {
        const bt_node *p = &b->nodes[parent];
        n->key = 2 * p->key + (is_left ? 0 : 1);
        n->depth = p->depth + 1;
    }
    *index = b->n_nodes++;
    return KN_OK;
}

/* _split_exact at the rounded halfway point; the bridge seed comes from the node's spawn key. */
static int bt_split(brownian *b, int node, kn_err *err) {
    bt_node *n = &b->nodes[node];
    if (n->depth >= BT_MAX_DEPTH)
        return kn_fail(err, KN_ERR_INVALID, "brownian tree: [%.6f, %.6f] is deeper than %d levels", n->start,
                       n->end, BT_MAX_DEPTH);
    double half = 0.5 * (n->end + n->start), start = n->start, end = n->end;
    uint32_t words[SS_POOL + 3] = {0};
    memcpy(words, b->entropy, (size_t)b->n_entropy * sizeof *words); /* zero-padded to the pool size */
    int len = SS_POOL;
    len += u64_words(n->key, words + len);
    words[len++] = (uint32_t)n->depth;
    n->mid = round6(half);
    n->seed = seed_sequence_word0(words, len);
    int l, r, rc = bt_add_node(b, start, half, node, 1, &l, err);
    if (!rc) rc = bt_add_node(b, half, end, node, 0, &r, err);
    if (rc) return rc;
    b->nodes[node].left = l; /* re-read: adding nodes may have moved the array */
    b->nodes[node].right = r;
    return KN_OK;
}

/* A slot emptied for `node`: a free one, else the least recently used one
 * holding a node right of the current query (samplers query descending
 * sigmas, so those are not needed again), else the least recently used. */
static float *bt_take_slot(brownian *b, int node, kn_err *err) {
    bt_slot *best = NULL;
    int best_stale = 0;
    for (int i = 0; i < BT_SLOTS; i++) {
        bt_slot *s = &b->slots[i];
        if (s->node < 0) {
            best = s;
            break;
        }
        int stale = b->nodes[s->node].start >= b->stale_from;
        if (!best || stale > best_stale || (stale == best_stale && s->used < best->used)) {
            best = s;
            best_stale = stale;
        }
    }
    if (!best->w && !(best->w = malloc((size_t)b->numel * sizeof(float)))) {
        kn_fail(err, KN_ERR_NOMEM, "brownian tree: out of memory for %lld values", (long long)b->numel);
        return NULL;
    }
    if (best->node >= 0) b->nodes[best->node].slot = -1;
    best->node = node;
    best->used = ++b->clock;
    b->nodes[node].slot = (int)(best - b->slots);
    return best->w;
}

static float *bt_cached(brownian *b, int node) {
    bt_slot *s = &b->slots[b->nodes[node].slot];
    s->used = ++b->clock;
    return s->w;
}

/* The slot to write a child's W into, or NULL when it is not worth keeping. A cached
 * child counts as used, so that taking a slot for its sibling cannot evict it. */
static float *bt_child_slot(brownian *b, int child, int wanted, kn_err *err) {
    const bt_node *c = &b->nodes[child];
    if (c->slot >= 0) return bt_cached(b, child);
    if (!wanted && c->start >= b->stale_from) return NULL; /* right of the query: not worth a slot */
    return bt_take_slot(b, child, err);
}

/* The children's W from the parent's (wp) by the Brownian bridge, in torch's float32 order;
 * one draw gives both (right = W - left), so the sibling of `want` is kept too when useful. */
static int bt_bridge(brownian *b, int parent, int want, const float *wp, kn_err *err) {
    const bt_node *p = &b->nodes[parent];
    int l = p->left, r = p->right;
    float *wl = bt_child_slot(b, l, l == want, err);
    if (!wl && l == want) return err->code;
    float *wr = bt_child_slot(b, r, r == want, err);
    if (!wr && r == want) return err->code;
    double h_rec = 1.0 / (p->end - p->start), left = p->mid - p->start, right = p->end - p->mid;
    float f_left = (float)left, f_h_rec = (float)h_rec, f_std = (float)sqrt(left * right * h_rec);
    kn_torch_rng g;
    kn_torch_rng_seed(&g, p->seed);
    kn_torch_randn(&g, b->noise, b->numel, b->path);
    float *e = b->noise; /* becomes the left W when that is not kept */
    if (!wl) wl = e;
#pragma omp parallel for schedule(static) if (b->numel >= (1 << 16))
    for (int64_t i = 0; i < b->numel; i++) {
        float mean = f_left * wp[i];
        mean = mean * f_h_rec;
        float dev = f_std * e[i];
        float left_w = mean + dev;
        wl[i] = left_w;
        if (wr) wr[i] = wp[i] - left_w;
    }
    return KN_OK;
}

/* W over a node: bridged down from its nearest cached ancestor (or the root). */
static const float *bt_increment(brownian *b, int node, kn_err *err) {
    int chain[BT_MAX_DEPTH + 1], len = 0, k = node;
    while (k != 0 && b->nodes[k].slot < 0) {
        chain[len++] = k;
        k = b->nodes[k].parent;
    }
    const float *w = k == 0 ? b->root_w : bt_cached(b, k);
    for (int i = len - 1; i >= 0; i--) { /* the parent was used last, so no slot taken here evicts it */
        if (bt_bridge(b, b->nodes[chain[i]].parent, chain[i], w, err)) return NULL;
        w = bt_cached(b, chain[i]);
    }
    return w;
}

/* Adds W over [ta, tb] (rounded, inside node) to sum, splitting into tree nodes
 * left to right as torchsde's _loc does. */
static int bt_accumulate(brownian *b, int node, double ta, double tb, float *sum, int *first, kn_err *err) {
    const bt_node *n = &b->nodes[node];
    if (ta == n->start && tb == n->end) {
        const float *w = bt_increment(b, node, err);
        if (!w) return err->code;
        for (int64_t i = 0; i < b->numel; i++) sum[i] = *first ? w[i] : sum[i] + w[i];
        *first = 0;
        return KN_OK;
    }
    if (n->left < 0) {
        int rc = bt_split(b, node, err);
        if (rc) return rc;
        n = &b->nodes[node];
    }
    double mid = n->mid;
    int l = n->left, r = n->right;
    if (tb <= mid) return bt_accumulate(b, l, ta, tb, sum, first, err);
    if (ta >= mid) return bt_accumulate(b, r, ta, tb, sum, first, err);
    int rc = bt_accumulate(b, l, ta, mid, sum, first, err);
    return rc ? rc : bt_accumulate(b, r, mid, tb, sum, first, err);
}

static int brownian_draw(kn_noise_source *src, float sigma, float sigma_next, kn_tensor *out, kn_err *err) {
    brownian *b = (brownian *)src;
    int rc = check_f32_cpu(out, "brownian noise", err);
    if (rc) return rc;
    if (kn_tensor_numel(out) != b->numel)
        return kn_fail(err, KN_ERR_SHAPE, "brownian noise: %lld values for a tree of %lld",
                       (long long)kn_tensor_numel(out), (long long)b->numel);
    float *o = out->data;
    /* BatchedBrownianTree sorts the times and flips the sign of a reversed query */
    int reversed = sigma > sigma_next;
    double ta = reversed ? sigma_next : sigma, tb = reversed ? sigma : sigma_next;
    const bt_node *root = &b->nodes[0];
    ta = fmin(fmax(ta, root->start), root->end); /* torchsde clamps (with a warning) */
    tb = fmin(fmax(tb, root->start), root->end);
    ta = round6(ta);
    tb = round6(tb);
    if (ta == tb) { /* torchsde returns zeros when equal before rounding and never ends after */
        memset(o, 0, (size_t)b->numel * sizeof *o);
        return KN_OK;
    }
    int first = 1;
    b->stale_from = tb;
    if ((rc = bt_accumulate(b, 0, ta, tb, o, &first, err))) return kn_err_wrap(err, "brownian noise");
    float span = sqrtf(fabsf(sigma_next - sigma)); /* float32 tensor arithmetic in ComfyUI */
    for (int64_t i = 0; i < b->numel; i++) {
        float w = reversed ? -o[i] : o[i];
        o[i] = w / span;
    }
    return KN_OK;
}

static void brownian_destroy(kn_noise_source *src) {
    brownian *b = (brownian *)src;
    for (int i = 0; i < BT_SLOTS; i++) free(b->slots[i].w);
    free(b->root_w);
    free(b->noise);
    free(b->nodes);
    free(b);
}

int kn_noise_brownian_new(kn_noise_source **out, int64_t numel, float sigma_min, float sigma_max,
                          uint64_t seed, kn_randn_path path, kn_err *err) {
    if (numel <= 0 || !(sigma_min <= sigma_max))
        return kn_fail(err, KN_ERR_INVALID, "brownian noise: bad tree [%g, %g] over %lld values", sigma_min,
                       sigma_max, (long long)numel);
    brownian *b = calloc(1, sizeof *b);
    if (!b) return kn_fail(err, KN_ERR_NOMEM, "brownian noise: out of memory");
    b->base.draw = brownian_draw;
    b->base.destroy = brownian_destroy;
    b->path = path;
    b->numel = numel;
    b->n_entropy = u64_words(seed, b->entropy);
    int rc = KN_OK;
    for (int i = 0; i < BT_SLOTS; i++) b->slots[i].node = -1;
    b->noise = malloc((size_t)numel * sizeof(float));
    b->root_w = malloc((size_t)numel * sizeof(float));
    if (!b->noise || !b->root_w) rc = kn_fail(err, KN_ERR_NOMEM, "brownian noise: out of memory");
    int root = 0; /* node 0 */
    if (!rc) rc = bt_add_node(b, sigma_min, sigma_max, -1, 0, &root, err);
    if (rc) {
        brownian_destroy(&b->base);
        return rc;
    }
    /* the root's W: SeedSequence(entropy) without spawn key, scaled by the unrounded span */
    kn_torch_rng g;
    kn_torch_rng_seed(&g, seed_sequence_word0(b->entropy, b->n_entropy));
    kn_torch_randn(&g, b->root_w, numel, path);
    float scale = (float)sqrt((double)sigma_max - (double)sigma_min);
    for (int64_t i = 0; i < numel; i++) b->root_w[i] = b->root_w[i] * scale;
    *out = &b->base;
    return KN_OK;
}
