/* The fixture harness behind `kiln fixture DIR`: see fixture.h. */
#include "pipelines/fixture.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct result {
    char name[128];
    kn_tensor t; /* F32, CPU, owned */
} result;

struct kn_fixture_results {
    result *items; /* grows: a schedules case emits ~100 tensors */
    int count, cap;
};

int kn_fixture_emit(kn_fixture_results *res, const char *name, const kn_tensor *t, kn_err *err) {
    if (res->count == res->cap) {
        int cap = res->cap ? 2 * res->cap : 64;
        result *items = realloc(res->items, (size_t)cap * sizeof *items);
        if (!items) return kn_fail(err, KN_ERR_NOMEM, "fixture output '%s': out of memory", name);
        res->items = items;
        res->cap = cap;
    }
    result *r = &res->items[res->count];
    if (strlen(name) >= sizeof r->name) return kn_fail(err, KN_ERR_INVALID, "output name '%s' too long", name);
    int rc = kn_tensor_new(&r->t, KN_F32, KN_DEV_CPU, t->ndim, t->ne, err);
    if (rc) return rc;
    rc = kn_tensor_copy(&r->t, t, err);
    if (rc) {
        kn_tensor_free(&r->t);
        return rc;
    }
    snprintf(r->name, sizeof r->name, "%s", name);
    res->count++;
    return KN_OK;
}

int kn_fixture_emit_debug(void *sink, const char *name, const kn_tensor *t) {
    kn_fixture_debug_sink *s = sink;
    char full[128];
    snprintf(full, sizeof full, "debug.%s", name);
    return kn_fixture_emit(s->res, full, t, s->err);
}

int kn_fixture_input(const kn_fixture_case *c, const char *name, kn_tensor *out, kn_err *err) {
    char full[256];
    snprintf(full, sizeof full, "in.%s", name);
    return kn_st_get(c->data, full, out, err);
}

/* A case whose weights are "<file> rounded to bfloat16 (RNE)" runs on a bf16 copy of <file>. */
static const char bf16_suffix[] = " rounded to bfloat16 (RNE)";

/* The case's weights entry: info["weights"], else the first key of meta["weights"]. */
static const char *weights_entry(const kn_fixture_case *c) {
    const char *file = json_string_value(json_object_get(c->info, "weights"));
    if (!file) {
        const json_t *w = json_object_get(c->meta, "weights");
        void *it = json_is_object(w) ? json_object_iter((json_t *)w) : NULL;
        file = it ? json_object_iter_key(it) : NULL;
    }
    return file;
}

static int folder_file(const kn_fixture_case *c, const char *file, size_t n, char *path, size_t len, kn_err *err) {
    if (!file || memchr(file, '/', n) || (n >= 2 && strstr(file, "..") && (size_t)(strstr(file, "..") - file) < n))
        return kn_fail(err, KN_ERR_FORMAT, "%s/meta.json: no usable weights file name", c->dir);
    if ((size_t)snprintf(path, len, "%s/%.*s", c->dir, (int)n, file) >= len)
        return kn_fail(err, KN_ERR_INVALID, "%s: path too long", c->dir);
    return KN_OK;
}

int kn_fixture_weights_path(const kn_fixture_case *c, char *path, size_t len, kn_err *err) {
    const char *file = weights_entry(c);
    return folder_file(c, file, file ? strlen(file) : 0, path, len, err);
}

/* A temporary file holding every float tensor of src rounded to bf16 (the rest as it is), opened. */
static int bf16_copy(const kn_st_file *src, kn_st_file **out, kn_err *err) {
    int n = kn_st_count(src), rc = KN_OK;
    kn_tensor *t = calloc((size_t)(n ? n : 1), sizeof *t);
    if (!t) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        const kn_tensor *s = kn_st_at(src, i);
        kn_dtype dt = kn_dtype_is_float(s->dtype) ? KN_BF16 : s->dtype;
        rc = kn_tensor_new(&t[i], dt, KN_DEV_CPU, s->ndim, s->ne, err);
        if (!rc) rc = kn_tensor_copy(&t[i], s, err);
        t[i].name = s->name;
    }
    char path[] = "/tmp/kiln-fixture-bf16-XXXXXX";
    int fd = rc ? -1 : mkstemp(path);
    if (!rc && fd < 0) rc = kn_fail(err, KN_ERR_IO, "cannot create a temporary file for the bf16 weights");
    if (fd >= 0) close(fd);
    if (!rc) rc = kn_st_write(path, t, n, err);
    if (!rc) rc = kn_st_open(out, path, err);
    if (fd >= 0) unlink(path); /* the mapping keeps the data */
    for (int i = 0; i < n; i++) kn_tensor_free(&t[i]);
    free(t);
    return rc;
}

int kn_fixture_open_weights(const kn_fixture_case *c, kn_st_file **out, kn_err *err) {
    char path[4096];
    const char *file = weights_entry(c);
    size_t n = file ? strlen(file) : 0, ns = sizeof bf16_suffix - 1;
    int rounded = n > ns && strcmp(file + n - ns, bf16_suffix) == 0;
    KN_TRY(folder_file(c, file, rounded ? n - ns : n, path, sizeof path, err));
    if (!rounded) return kn_st_open(out, path, err);
    kn_st_file *src = NULL;
    KN_TRY(kn_st_open(&src, path, err));
    int rc = bf16_copy(src, out, err);
    kn_st_close(src);
    return rc;
}

double kn_fixture_config_num(const kn_fixture_case *c, const char *key, double dflt) {
    const json_t *v = json_object_get(json_object_get(c->meta, "config"), key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

int kn_fixture_config_ints(const kn_fixture_case *c, const char *key, int *vals, int max) {
    const json_t *a = json_object_get(json_object_get(c->meta, "config"), key);
    int n = 0;
    for (size_t i = 0; json_is_array(a) && i < json_array_size(a) && n < max; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_integer(v)) return 0;
        vals[n++] = (int)json_integer_value(v);
    }
    return n;
}

void kn_fixture_dit_overrides(const kn_fixture_case *c, const json_t *config, kn_dit_consts *o) {
    if (!config) config = json_object_get(c->meta, "config");
    memset(o, 0, sizeof *o);
    /* diffusers-style names (Qwen-Image) or BFL ones (Flux) */
    const json_t *axes = json_object_get(config, "axes_dims_rope");
    if (!axes) axes = json_object_get(config, "axes_dim");
    if (!axes) axes = json_object_get(config, "axes_dims");
    if (json_array_size(axes) == 3)
        for (size_t i = 0; i < 3; i++) o->axes_dims[i] = (int)json_integer_value(json_array_get(axes, i));
    const json_t *theta = json_object_get(config, "rope_theta"), *patch = json_object_get(config, "patch_size");
    if (!theta) theta = json_object_get(config, "theta");
    if (json_is_number(theta)) o->rope_theta = json_number_value(theta);
    if (json_is_integer(patch)) o->patch = (int)json_integer_value(patch);
}

int kn_fixture_dit_family(const kn_fixture_case *c, const kn_st_file *f, const kn_dit_family **fam,
                          const char **prefix, kn_err *err) {
    if ((*fam = kn_dit_family_named(json_string_value(json_object_get(c->meta, "family"))))) {
        *prefix = kn_dit_prefix(f);
        return KN_OK;
    }
    return kn_dit_detect(f, fam, prefix, err);
}

/* How one expected tensor is compared (the lookup order is in fixture.h).
 * NaN in the reference must be matched by NaN (ComfyUI returns NaN for some
 * degenerate schedules). */
typedef struct tolerance {
    enum { TOL_REL_L2, TOL_PER_VALUE, TOL_BITWISE } mode;
    double rel, abs_floor;
} tolerance;

static int tensor_tolerance(const char *dir, const json_t *meta, const json_t *info, const char *name,
                            tolerance *out, kn_err *err) {
    const json_t *tol = json_object_get(meta, "tolerance");
    const char *own = json_string_value(json_object_get(tol, name));
    if (own && strncmp(own, "bit-exact", 9) == 0) {
        *out = (tolerance){TOL_BITWISE, 0.0, 0.0};
        return KN_OK;
    }
    const char *w = json_string_value(json_object_get(info, "weights"));
    const char *kind = json_string_value(json_object_get(info, "kind"));
    const json_t *v = json_object_get(info, "tolerance_rel_l2");
    if (!v && kind && strcmp(kind, "patched_weights") == 0) v = json_object_get(tol, "rel_l2_weights");
    if (!v && kind && strcmp(kind, "dit_output") == 0) v = json_object_get(tol, "rel_l2_outputs");
    if (!v && w && strstr(w, "bf16")) v = json_object_get(tol, "rel_l2_bf16_case");
    if (!v) v = json_object_get(tol, "rel_l2_fp32");
    if (!v) v = json_object_get(tol, "rel_fp32");
    if (!json_is_number(v)) {
        char *keys = json_is_object(tol) ? json_dumps(tol, JSON_COMPACT) : NULL;
        kn_fail(err, KN_ERR_FORMAT, "%s/meta.json: no tolerance applies to %s (case kind '%s'; tolerance %s)", dir,
                name, kind ? kind : "none", keys ? keys : "absent");
        free(keys);
        return err->code;
    }
    const json_t *floor = json_object_get(tol, "abs_floor");
    *out = json_is_number(floor) ? (tolerance){TOL_PER_VALUE, json_number_value(v), json_number_value(floor)}
                                 : (tolerance){TOL_REL_L2, json_number_value(v), 0.0};
    return KN_OK;
}

/* The error of `out` against `ref` in the tolerance's own measure (pass: <= limit). */
static double tensor_error(const kn_tensor *out, const kn_tensor *ref_f32, const tolerance *tol, double *limit) {
    const float *a = out->data, *b = ref_f32->data;
    int64_t n = kn_tensor_numel(out);
    double num = 0.0, den = 0.0, worst = 0.0;
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++) {
        if (tol->mode == TOL_BITWISE) {
            differ += memcmp(&a[i], &b[i], sizeof a[i]) != 0;
            continue;
        }
        if (isnan(b[i]) || isnan(a[i])) {
            if (!(isnan(b[i]) && isnan(a[i]))) return *limit = tol->rel, INFINITY;
            continue;
        }
        double d = (double)a[i] - b[i];
        if (tol->mode == TOL_PER_VALUE) {
            double r = fabs(d) / (tol->rel * fabs((double)b[i]) + tol->abs_floor);
            if (r > worst) worst = r;
        }
        num += d * d;
        den += (double)b[i] * b[i];
    }
    switch (tol->mode) {
    case TOL_BITWISE: *limit = 0.0; return (double)differ;
    case TOL_PER_VALUE: *limit = 1.0; return worst;
    default: break;
    }
    *limit = tol->rel;
    if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
    return sqrt(num / den);
}

/* Compares every expected tensor the runner produced; returns 1 on a miss
 * (including a case with nothing to compare), -1 on an error. */
static int compare_case(const char *dir, const kn_st_file *data, kn_fixture_results *res, const char *label,
                        const json_t *meta, const json_t *info, kn_err *err) {
    int missed = 0, expected = 0;
    for (int i = 0; i < kn_st_count(data); i++) {
        const kn_tensor *ref = kn_st_at(data, i);
        /* intermediates are stored as "debug.x" or "out.debug.x"; runners emit "debug.x" */
        const char *want = strncmp(ref->name, "out.debug.", 10) == 0 ? ref->name + 4 : ref->name;
        int is_debug = strncmp(want, "debug.", 6) == 0, is_out = !is_debug && strncmp(want, "out.", 4) == 0;
        if (!is_out && !is_debug) continue;
        expected += is_out;
        result *got = NULL;
        for (int j = 0; j < res->count; j++)
            if (strcmp(res->items[j].name, want) == 0) got = &res->items[j];
        if (!got) {
            if (is_out) {
                printf("  %-34s MISSING  (%s did not produce it)\n", ref->name, label);
                missed = 1;
            }
            continue;
        }
        char a[96], b[96];
        int same_shape = got->t.ndim == ref->ndim;
        for (int d = 0; same_shape && d < ref->ndim; d++) same_shape = got->t.ne[d] == ref->ne[d];
        if (!same_shape) {
            printf("  %-34s SHAPE    got %s, expected %s\n", ref->name, kn_tensor_desc(&got->t, a, sizeof a),
                   kn_tensor_desc(ref, b, sizeof b));
            missed |= is_out;
            continue;
        }
        tolerance tol = {TOL_REL_L2, 0.0, 0.0};
        if (tensor_tolerance(dir, meta, info, want, &tol, err)) return -1;
        kn_tensor ref32;
        if (kn_tensor_new(&ref32, KN_F32, KN_DEV_CPU, ref->ndim, ref->ne, err) || kn_tensor_copy(&ref32, ref, err))
            return kn_tensor_free(&ref32), -1;
        double limit, e = tensor_error(&got->t, &ref32, &tol, &limit);
        kn_tensor_free(&ref32);
        int pass = e <= limit;
        const char *verdict = pass ? "ok" : is_out ? "FAIL" : "(debug, differs)";
        if (tol.mode == TOL_BITWISE)
            printf("  %-34s bit-exact: %.0f of %lld values differ  %s\n", ref->name, e,
                   (long long)kn_tensor_numel(ref), verdict);
        else if (tol.mode == TOL_PER_VALUE)
            printf("  %-34s max |a-b|/(%.0e|b|+%.0e) %.3f  %s\n", ref->name, tol.rel, tol.abs_floor, e, verdict);
        else
            printf("  %-34s rel_l2 %.3e  tol %.1e  %s\n", ref->name, e, limit, verdict);
        if (!pass && is_out) missed = 1;
    }
    if (expected == 0) {
        printf("  NO out.* TENSORS  (the case file has nothing to compare)\n");
        missed = 1;
    }
    return missed;
}

static void results_clear(kn_fixture_results *res) {
    for (int i = 0; i < res->count; i++) kn_tensor_free(&res->items[i].t);
    res->count = 0;
}

/* A component "a/b" (a sub-folder of a component's fixtures) runs under the runner of "a". */
static kn_fixture_fn find_runner(const kn_fixture_runner *runners, const char *component) {
    size_t len = component ? strcspn(component, "/") : 0;
    for (const kn_fixture_runner *r = runners; component && r->component; r++)
        if (strlen(r->component) == len && strncmp(r->component, component, len) == 0) return r->run;
    return NULL;
}

/* A folder whose meta.json lists "folders" (and has no "cases") runs each sub-folder in turn. */
static int run_folders(const char *dir, const json_t *folders, const kn_fixture_runner *runners, const kn_sp *sp,
                       int *failed, kn_err *err) {
    const char *name;
    const json_t *what;
    json_object_foreach((json_t *)folders, name, what) {
        char sub[4096];
        kn_err serr;
        kn_err_clear(&serr);
        int f = 0;
        if (strchr(name, '/') || strstr(name, "..") ||
            (size_t)snprintf(sub, sizeof sub, "%s/%s", dir, name) >= sizeof sub) {
            printf("%s: ERROR folder name '%s' is not a plain name\n", dir, name);
            f = 1;
        } else if (kn_fixture_run_dir(sub, runners, sp, &f, &serr) != KN_OK && f == 0) {
            printf("%s: ERROR %s\n", sub, serr.msg); /* the folder could not run at all */
            f = 1;
        }
        *failed += f;
        (void)what;
    }
    return *failed ? kn_fail(err, KN_ERR_INVALID, "%s: %d case(s) failed", dir, *failed) : KN_OK;
}

int kn_fixture_run_dir(const char *dir, const kn_fixture_runner *runners, const kn_sp *sp, int *failed,
                       kn_err *err) {
    char path[4096];
    *failed = 0;
    snprintf(path, sizeof path, "%s/meta.json", dir);
    json_error_t jerr;
    json_t *meta = json_load_file(path, 0, &jerr);
    if (!meta) return kn_fail(err, KN_ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    const char *component = json_string_value(json_object_get(meta, "component"));
    const json_t *cases = json_object_get(meta, "cases");
    const json_t *folders = json_object_get(meta, "folders");
    if (!cases && json_is_object(folders)) {
        int rc = run_folders(dir, folders, runners, sp, failed, err);
        json_decref(meta);
        return rc;
    }
    kn_fixture_fn run = find_runner(runners, component);
    if (!run || !json_is_array(cases)) {
        json_decref(meta);
        return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: component '%s' has no runner in this build", path,
                       component ? component : "(none)");
    }
    kn_ctx ctx;
    int rc = kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32);
    kn_fixture_results *res = calloc(1, sizeof *res);
    if (rc || !res) {
        json_decref(meta);
        free(res);
        kn_ctx_free(&ctx);
        return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    }
    printf("%s (%s): %zu cases\n", dir, component, json_array_size(cases));
    size_t i;
    json_t *info;
    json_array_foreach(cases, i, info) {
        const char *file = json_string_value(json_object_get(info, "file"));
        const char *desc = json_string_value(json_object_get(info, "desc"));
        if (!desc) desc = json_string_value(json_object_get(info, "what"));
        printf("case %zu: %s\n", i, desc ? desc : "");
        kn_st_file *data = NULL;
        kn_err cerr;
        kn_err_clear(&cerr);
        int crc = KN_ERR_FORMAT;
        if (!file || strchr(file, '/')) {
            kn_fail(&cerr, KN_ERR_FORMAT, "case %zu has no plain file name", i);
        } else {
            snprintf(path, sizeof path, "%s/%s", dir, file);
            crc = kn_st_open(&data, path, &cerr);
        }
        if (crc == KN_OK) {
            kn_fixture_case c = {dir, meta, info, data, &ctx, sp};
            kn_err_clear(&ctx.err);
            crc = run(&c, res, &cerr);
            if (crc == KN_OK) {
                int m = compare_case(dir, data, res, component, meta, info, &cerr);
                crc = m < 0 ? cerr.code : KN_OK;
                if (m > 0) (*failed)++;
            }
        }
        if (crc != KN_OK) {
            printf("  ERROR %s\n", cerr.msg);
            (*failed)++;
        }
        results_clear(res);
        kn_st_close(data);
    }
    printf("%s: %zu cases, %d failed\n", component, json_array_size(cases), *failed);
    free(res->items);
    free(res);
    kn_ctx_free(&ctx);
    json_decref(meta);
    return *failed ? kn_fail(err, KN_ERR_INVALID, "%s: %d case(s) failed", dir, *failed) : KN_OK;
}
