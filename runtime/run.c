/* kiln run: see runtime/run.h. */
#include "runtime/run.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graph/executor.h"
#include "kernels/json.h"
#include "graph/validate.h"
#include "graph/workflow.h"
#include "kernels/sha256.h"
#include "nodes/model_store.h"
#include "runtime/launch.h"

#ifndef KN_DEFAULT_MODELS
#define KN_DEFAULT_MODELS "models"
#endif

typedef struct run_opts {
    const char *models, *output, *input, *temp;
    const char **sets;
    int n_sets;
    const char *seed;
    const char *precision; /* GEMM input precision: fp32 (default), bf16, fp16 */
    const char *memory_budget; /* --memory-budget, NULL: the default */
    int json;
    int timings; /* --timings */
} run_opts;

/* --timings: wall seconds per executed node and per sampler step, taken from
 * the executor's events (a node ends at its EXECUTED or at the next node's
 * EXECUTING; a step ends at its PROGRESS, so step 1 includes the sampler's
 * setup before its first model call), and each node's peak resident memory:
 * the kernel's high-water mark (VmHWM) is reset when the node starts
 * (clear_refs 5) and read when it ends, so it is the process's peak while
 * that node ran (mapped weights it touched included). */
typedef struct run_timings {
    json_t *nodes;    /* [{node, class_type, seconds, peak_rss_mib, steps: [s, ...]}] in execution order */
    json_t *open;     /* the node running now, an element of nodes, or NULL */
    double node_t0, step_t0, run_t0;
} run_timings;

typedef struct run_state {
    const run_opts *o;
    int bar_total; /* the progress bar on stderr is open */
    run_timings t;
} run_state;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Resets the process's peak RSS to its current RSS (where the kernel does
 * not allow it, peaks count from the process's start). */
static void peak_rss_reset(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return;
    fputs("5", f);
    fclose(f);
}

/* The process's peak RSS in MiB (VmHWM), -1 where /proc does not say. */
static double peak_rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1.0;
    char line[256];
    long long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lld kB", &kib) == 1) break;
    fclose(f);
    return kib < 0 ? -1.0 : (double)kib / 1024.0;
}

static void timing_close(run_timings *t, double now) {
    if (t->open) {
        json_object_set_new(t->open, "seconds", json_real(now - t->node_t0));
        json_object_set_new(t->open, "peak_rss_mib", json_real(peak_rss_mib()));
    }
    t->open = NULL;
}

static void timing_event(run_timings *t, const kn_exec_event *ev) {
    double now = now_s();
    if (ev->kind == KN_EVENT_EXECUTING) {
        timing_close(t, now);
        json_t *n = json_pack("{s:s, s:s, s:f, s:[]}", "node", ev->node_id, "class_type", ev->node_type, "seconds", 0.0,
                              "steps");
        if (n && json_array_append_new(t->nodes, n) == 0) t->open = n;
        t->node_t0 = t->step_t0 = now;
        peak_rss_reset();
    } else if (ev->kind == KN_EVENT_PROGRESS && t->open) {
        json_array_append_new(json_object_get(t->open, "steps"), json_real(now - t->step_t0));
        t->step_t0 = now;
    } else if (ev->kind == KN_EVENT_EXECUTED && t->open &&
               strcmp(json_string_value(json_object_get(t->open, "node")), ev->node_id) == 0) {
        timing_close(t, now);
    }
}

/* The largest of the nodes' peaks: the run's peak resident memory (the
 * kernel's own high-water mark, which outside tools read, was reset at each
 * node). */
static double run_peak_rss(const run_timings *t) {
    double peak = -1.0;
    size_t i;
    json_t *n;
    json_array_foreach(t->nodes, i, n) {
        double p = json_real_value(json_object_get(n, "peak_rss_mib"));
        peak = p > peak ? p : peak;
    }
    return peak;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The table on stderr: node, class, seconds, share of the run, peak RSS; a
 * sampler's steps as min / median / max. */
static void print_timings(const run_timings *t, double total) {
    fprintf(stderr, "timings (wall seconds, %.3f s in all; peak resident memory while the node ran, %.0f MiB in all):\n",
            total, run_peak_rss(t));
    size_t i;
    json_t *n;
    json_array_foreach(t->nodes, i, n) {
        double s = json_real_value(json_object_get(n, "seconds"));
        fprintf(stderr, "  %-6s %-32s %9.3f s %5.1f%% %8.0f MiB", json_string_value(json_object_get(n, "node")),
                json_string_value(json_object_get(n, "class_type")), s, total > 0 ? 100.0 * s / total : 0.0,
                json_real_value(json_object_get(n, "peak_rss_mib")));
        const json_t *steps = json_object_get(n, "steps");
        size_t k = json_array_size(steps);
        double *v = k ? malloc(k * sizeof *v) : NULL;
        if (v) {
            for (size_t j = 0; j < k; j++) v[j] = json_real_value(json_array_get(steps, j));
            double first = v[0];
            qsort(v, k, sizeof *v, cmp_double);
            fprintf(stderr, "  %zu steps: min %.3f, median %.3f, max %.3f s (step 1 %.3f s, with setup)", k, v[0],
                    k % 2 ? v[k / 2] : 0.5 * (v[k / 2 - 1] + v[k / 2]), v[k - 1], first);
        }
        free(v);
        fputc('\n', stderr);
    }
}

/* The executor SIGINT interrupts (one run at a time per process). */
static kn_executor *volatile interrupt_target;

static void on_sigint(int sig) {
    (void)sig;
    if (interrupt_target) kn_executor_interrupt(interrupt_target);
}

static const char help_text[] =
    "usage: kiln run [OPTION]... FILE...\n"
    "Render ComfyUI workflow files (API or UI format) headlessly; images go to --output.\n"
    "  --models DIR              ComfyUI models folder (default $KILN_MODELS, else the build's tiny set)\n"
    "  --output DIR              where SaveImage writes (default output)\n"
    "  --input DIR               where LoadImage reads (default input)\n"
    "  --temp DIR                where PreviewImage writes (default temp)\n"
    "  --set NODE.INPUT=VALUE    set an input before the run (VALUE is JSON, else a string); repeatable\n"
    "  --seed N                  set every seed and noise_seed input\n"
    "  --precision fp32|bf16|fp16  input precision of the GEMMs (default fp32; weights stay as stored)\n"
    "  --memory-budget SIZE      refuse nodes estimated to need more (bytes or K/M/G/T; default 75% of RAM)\n"
    "  --json                    one JSON line per event (ComfyUI's websocket message shapes) on stdout\n"
    "  --timings                 wall seconds per node and per sampler step: a table on stderr after each\n"
    "                            file, or with --json a \"timings\" event\n"
    "  --sp auto|ulysses|ring    under mpirun: how DiT attention is split across the ranks\n"
    "  --sp-ulysses U            under mpirun: the Ulysses degree\n"
    "  --sp-timeout S            under mpirun: seconds before a silent rank fails a render (default 120)\n"
    "  -h, --help                this help\n"
    "under mpirun -np N, every DiT forward is split across the N ranks\n";

/* 0 .. 2^64 - 1, as ComfyUI's seed inputs take. */
static int is_seed(const json_t *v) {
    uint64_t big;
    return (json_is_integer(v) && json_integer_value(v) >= 0) || kn_json_u64_value(v, &big);
}

/* A usage error: one plain line naming what was wrong, exit status 2. */
static int usage_error(const char *fmt, const char *a) {
    fprintf(stderr, "kiln run: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, " (kiln run --help lists the options)\n");
    return 2;
}

static void print_line(const json_t *msg) {
    char *s = kn_json_dumps(msg, 0);
    if (s) printf("%s\n", s);
    free(s);
    fflush(stdout);
}

static void print_event(const char *type, json_t *data) {
    json_t *msg = json_pack("{s:s, s:o}", "type", type, "data", data);
    if (msg) print_line(msg);
    json_decref(msg);
}

/* Where an executed node's files (ui "images", then "latents") are on disk. */
static json_t *output_paths(const run_opts *o, const json_t *ui) {
    static const char *const kinds[] = {"images", "latents"};
    json_t *paths = json_array();
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        size_t i;
        const json_t *f;
        json_array_foreach(json_object_get(ui, kinds[k]), i, f) {
            const char *sub = json_string_value(json_object_get(f, "subfolder"));
            const char *type = json_string_value(json_object_get(f, "type"));
            char p[8192];
            snprintf(p, sizeof p, "%s/%s%s%s", type && strcmp(type, "temp") == 0 ? o->temp : o->output,
                     sub ? sub : "", sub && *sub ? "/" : "", json_string_value(json_object_get(f, "filename")));
            json_array_append_new(paths, json_string(p));
        }
    }
    return paths;
}

static void on_event(void *user, const kn_exec_event *ev) {
    run_state *st = user;
    const run_opts *o = st->o;
    if (o->timings) timing_event(&st->t, ev);
    if (o->json) {
        switch (ev->kind) {
        case KN_EVENT_START:
            print_event("execution_start", json_pack("{s:s?}", "prompt_id", ev->prompt_id));
            print_event("execution_cached", json_pack("{s:O, s:s?}", "nodes", ev->data, "prompt_id", ev->prompt_id));
            break;
        case KN_EVENT_EXECUTING:
            print_event("executing", json_pack("{s:s, s:s?}", "node", ev->node_id, "prompt_id", ev->prompt_id));
            break;
        case KN_EVENT_PROGRESS:
            print_event("progress", json_pack("{s:i, s:i, s:s?, s:s}", "value", ev->step, "max", ev->total,
                                              "prompt_id", ev->prompt_id, "node", ev->node_id));
            break;
        case KN_EVENT_EXECUTED:
            print_event("executed", json_pack("{s:s, s:O, s:s?, s:o}", "node", ev->node_id, "output", ev->data,
                                              "prompt_id", ev->prompt_id, "paths", output_paths(o, ev->data)));
            break;
        case KN_EVENT_PREVIEW: /* never asked for: kiln run makes no previews */
            break;
        }
        return;
    }
    if (ev->kind == KN_EVENT_EXECUTING) {
        if (st->bar_total) fputc('\n', stderr);
        st->bar_total = 0;
        fprintf(stderr, "[%s] %s\n", ev->node_id, ev->node_type);
    } else if (ev->kind == KN_EVENT_PROGRESS) {
        int width = 30, filled = ev->total > 0 ? ev->step * width / ev->total : width;
        fprintf(stderr, "\r  %3d%% |", ev->total > 0 ? ev->step * 100 / ev->total : 100);
        for (int i = 0; i < width; i++) fputc(i < filled ? '#' : ' ', stderr);
        fprintf(stderr, "| %d/%d", ev->step, ev->total);
        st->bar_total = ev->total;
    } else if (ev->kind == KN_EVENT_EXECUTED) {
        if (st->bar_total) fputc('\n', stderr);
        st->bar_total = 0;
        json_t *paths = output_paths(o, ev->data);
        size_t i;
        json_t *p;
        json_array_foreach(paths, i, p) printf("%s\n", json_string_value(p));
        json_decref(paths);
        fflush(stdout);
    }
}

/* --set NODE.INPUT=VALUE and --seed N on the API prompt. */
static int apply_edits(const run_opts *o, json_t *prompt, kn_err *err) {
    for (int i = 0; i < o->n_sets; i++) {
        const char *s = o->sets[i], *eq = strchr(s, '=');
        const char *dot = eq ? memrchr(s, '.', (size_t)(eq - s)) : NULL;
        if (!dot || dot == s || dot + 1 == eq)
            return kn_fail(err, KN_ERR_INVALID, "--set '%s': expected NODE.INPUT=VALUE", s);
        char *id = strndup(s, (size_t)(dot - s)), *name = strndup(dot + 1, (size_t)(eq - dot - 1));
        json_t *inputs = json_object_get(json_object_get(prompt, id ? id : ""), "inputs");
        json_error_t jerr;
        json_t *value = kn_json_loadb(eq + 1, strlen(eq + 1), &jerr);
        if (!value) value = json_string(eq + 1);
        int rc = !id || !name || !value ? kn_fail(err, KN_ERR_NOMEM, "out of memory")
                 : !json_is_object(inputs) ? kn_fail(err, KN_ERR_NOT_FOUND, "--set '%s': no node '%s' in the prompt", s, id)
                 : json_object_set_new(inputs, name, value) ? kn_fail(err, KN_ERR_NOMEM, "out of memory")
                                                             : KN_OK;
        if (rc && value && (!id || !name || !json_is_object(inputs))) json_decref(value);
        free(id);
        free(name);
        if (rc) return rc;
    }
    if (!o->seed) return KN_OK;
    json_error_t jerr;
    json_t *seed = kn_json_loadb(o->seed, strlen(o->seed), &jerr);
    if (!is_seed(seed)) {
        json_decref(seed);
        return kn_fail(err, KN_ERR_INVALID, "--seed '%s': expected a non-negative integer", o->seed);
    }
    const char *id;
    json_t *node;
    json_object_foreach(prompt, id, node) {
        json_t *inputs = json_object_get(node, "inputs");
        static const char *const names[] = {"seed", "noise_seed"};
        for (int k = 0; k < 2; k++) {
            json_t *v = json_object_get(inputs, names[k]);
            if (v && !json_is_array(v)) json_object_set(inputs, names[k], seed); /* constants only, not links */
        }
    }
    json_decref(seed);
    return KN_OK;
}

/* Reports a failure: the ComfyUI-shaped JSON on stdout, a line on stderr. */
static int report_failure(const char *path, const json_t *body, const kn_err *err) {
    if (body) print_line(body);
    fprintf(stderr, "kiln run: %s: %s\n", path, err->msg);
    return 1;
}

static int run_file(const run_opts *o, kn_models *models, kn_executor *ex, const char *path) {
    kn_err err;
    kn_err_clear(&err);
    kn_folder_lister lister = kn_models_lister(models);
    kn_node_env env = kn_executor_env(ex);
    json_t *prompt = NULL, *error = NULL, *extra = NULL;
    if (kn_workflow_load_file(path, &lister, &prompt, &error, &err)) {
        int rc = report_failure(path, error, &err);
        json_decref(error);
        return rc;
    }
    /* A UI-format file goes into the PNGs as the "workflow" chunk, as the front end sends it. */
    json_t *doc = json_load_file(path, 0, NULL);
    if (doc && kn_workflow_detect(doc) == KN_WORKFLOW_UI) extra = json_pack("{s:O}", "workflow", doc);
    json_decref(doc);

    kn_validation v = {0};
    kn_exec_result res = {0};
    int status = 0;
    if (apply_edits(o, prompt, &err) ||
        (extra && kn_workflow_write_back(json_object_get(extra, "workflow"), prompt, &err))) { /* the PNG shows what ran */
        json_t *body = kn_prompt_error_body("invalid_prompt", "Invalid prompt", err.msg, NULL);
        status = report_failure(path, body, &err);
        json_decref(body);
    } else if (kn_validate_prompt(prompt, NULL, &lister, &env, &v, &err)) {
        json_t *body = v.error ? kn_validation_body(&v) : NULL;
        status = report_failure(path, body, &err);
        json_decref(body);
    } else {
        if (json_object_size(v.node_errors)) { /* ComfyUI runs the valid outputs and reports the rest */
            json_t *body = kn_validation_body(&v);
            fprintf(stderr, "kiln run: %s: some outputs failed validation and are skipped\n", path);
            if (body) print_line(body);
            json_decref(body);
        }
        char id[40];
        kn_uuid4(id, 1);
        run_state st = {o, 0, {o->timings ? json_array() : NULL, NULL, 0, 0, now_s()}};
        kn_executor_set_events(ex, on_event, &st);
        int failed = kn_executor_run(ex, prompt, &v, extra, id, &res, &err);
        timing_close(&st.t, now_s());
        double total = now_s() - st.t.run_t0;
        if (failed) {
            if (st.bar_total) fputc('\n', stderr);
            status = report_failure(path, res.error, &err);
        } else if (o->json) {
            print_event("execution_success", json_pack("{s:s, s:O, s:O, s:O}", "prompt_id", id, "outputs", res.outputs,
                                                       "executed", res.executed, "cached", res.cached));
        }
        if (o->timings && o->json) /* after success or failure: where the time went either way */
            print_event("timings", json_pack("{s:s, s:f, s:f, s:O}", "prompt_id", id, "seconds", total, "peak_rss_mib",
                                             run_peak_rss(&st.t), "nodes", st.t.nodes));
        else if (o->timings)
            print_timings(&st.t, total);
        json_decref(st.t.nodes);
    }
    kn_exec_result_free(&res);
    kn_validation_free(&v);
    json_decref(prompt);
    json_decref(extra);
    return status;
}

/* What this rank was asked to do, for kn_launch_start to compare across
 * ranks: the options that change a render and each workflow file's digest. */
static char *launch_description(const run_opts *o, const char **files, int n) {
    char *models = realpath(o->models, NULL);
    json_t *j = json_pack("{s:s, s:s, s:s?, s:[]}", "command", "run", "models", models ? models : o->models, "seed",
                          o->seed, "files");
    free(models);
    json_t *sets = json_array();
    for (int i = 0; j && sets && i < o->n_sets; i++) json_array_append_new(sets, json_string(o->sets[i]));
    if (j) json_object_set_new(j, "sets", sets ? sets : json_null());
    if (j) json_object_set_new(j, "precision", json_string(o->precision));
    for (int i = 0; j && i < n; i++) {
        char hex[KN_SHA256_HEX] = "unreadable";
        FILE *f = fopen(files[i], "rb");
        if (f) {
            kn_sha256 h;
            unsigned char buf[65536], digest[32];
            size_t got;
            kn_sha256_init(&h);
            while ((got = fread(buf, 1, sizeof buf, f)) > 0) kn_sha256_update(&h, buf, got);
            fclose(f);
            kn_sha256_final(&h, digest);
            kn_sha256_hex(digest, hex);
        }
        json_array_append_new(json_object_get(j, "files"), json_pack("{s:s, s:s}", "file", files[i], "sha256", hex));
    }
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    return s;
}

int kn_cmd_run(int argc, char **argv) {
    run_opts o = {NULL, "output", "input", "temp", NULL, 0, NULL, "fp32", NULL, 0, 0};
    const char **files = calloc((size_t)argc + 1, sizeof *files);
    o.sets = calloc((size_t)argc + 1, sizeof *o.sets);
    int n_files = 0;
    if (!files || !o.sets) {
        free(files);
        free(o.sets);
        fprintf(stderr, "kiln run: out of memory\n");
        return 1;
    }
    int bad = 0; /* 1: the message is printed, 2: help asked */
    kn_launch launch;
    kn_launch_init(&launch);
    for (int i = 0; i < argc && !bad; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            bad = 2;
            break;
        }
        int sp_opt = kn_launch_option(&launch, argc, argv, &i); /* names a bad --sp* itself */
        if (sp_opt) {
            bad = sp_opt < 0;
            continue;
        }
        const char **dst = strcmp(a, "--models") == 0  ? &o.models
                           : strcmp(a, "--output") == 0 ? &o.output
                           : strcmp(a, "--input") == 0  ? &o.input
                           : strcmp(a, "--temp") == 0   ? &o.temp
                           : strcmp(a, "--seed") == 0   ? &o.seed
                           : strcmp(a, "--precision") == 0 ? &o.precision
                           : strcmp(a, "--memory-budget") == 0 ? &o.memory_budget
                           : strcmp(a, "--set") == 0    ? &o.sets[o.n_sets]
                                                        : NULL;
        if (dst) {
            if (i + 1 >= argc) bad = usage_error("%s needs a value", a) != 0;
            else *dst = argv[++i];
            if (dst == &o.sets[o.n_sets]) o.n_sets++;
        } else if (strcmp(a, "--json") == 0) {
            o.json = 1;
        } else if (strcmp(a, "--timings") == 0) {
            o.timings = 1;
        } else if (a[0] == '-' && a[1]) {
            bad = usage_error("unknown option '%s'", a) != 0;
        } else {
            files[n_files++] = a;
        }
    }
    kn_precision precision = KN_PREC_FP32;
    if (!bad && kn_precision_parse(o.precision, &precision) != KN_OK)
        bad = usage_error("--precision: '%s' is not one of fp32, bf16, fp16", o.precision) != 0;
    uint64_t budget = 0;
    if (!bad && o.memory_budget && kn_parse_size(o.memory_budget, &budget) != 0)
        bad = usage_error("--memory-budget: '%s' is not a size (bytes, or a number with K, M, G or T)",
                          o.memory_budget) != 0;
    if (!bad && o.seed) {
        json_error_t jerr;
        json_t *seed = kn_json_loadb(o.seed, strlen(o.seed), &jerr);
        if (!is_seed(seed))
            bad = usage_error("--seed: '%s' is not a non-negative integer", o.seed) != 0;
        json_decref(seed);
    }
    for (int i = 0; !bad && i < o.n_sets; i++) {
        const char *eq = strchr(o.sets[i], '='), *dot = eq ? memrchr(o.sets[i], '.', (size_t)(eq - o.sets[i])) : NULL;
        if (!dot || dot == o.sets[i] || dot + 1 == eq) bad = usage_error("--set '%s': expected NODE.INPUT=VALUE", o.sets[i]) != 0;
    }
    if (!bad && n_files == 0) bad = usage_error("no workflow file given%s", "") != 0;
    if (bad) {
        free(files);
        free(o.sets);
        if (bad == 2) fputs(help_text, stdout);
        return bad == 2 ? 0 : 2;
    }
    if (!o.models) o.models = getenv("KILN_MODELS") && *getenv("KILN_MODELS") ? getenv("KILN_MODELS") : KN_DEFAULT_MODELS;

    kn_err err;
    kn_err_clear(&err);
    char *what = launch_description(&o, files, n_files);
    if (!what || kn_launch_start(&launch, what, &err)) {
        fprintf(stderr, "kiln run: %s\n", what ? err.msg : "out of memory");
        free(what);
        free(files);
        free(o.sets);
        return kn_launch_end(&launch, 1);
    }
    free(what);
    if (launch.rank > 0) { /* the DiT of rank 0's renders */
        free(files);
        free(o.sets);
        return kn_launch_follow(&launch, precision);
    }
    kn_models *models = NULL;
    kn_executor *ex = NULL;
    int status = 0;
    kn_executor_config cfg = {NULL, o.output, o.temp, o.input, precision, launch.ranks};
    if (kn_models_new(&models, o.models, o.input, &err) || (cfg.models = models, kn_executor_new(&ex, &cfg, &err))) {
        fprintf(stderr, "kiln run: %s\n", err.msg);
        status = 1;
    }
    if (!status) {
        kn_models_set_budget(models, budget);
        interrupt_target = ex;
        signal(SIGINT, on_sigint);
        for (int i = 0; i < n_files; i++) status |= run_file(&o, models, ex, files[i]);
        signal(SIGINT, SIG_DFL);
        interrupt_target = NULL;
    }
    kn_executor_free(ex);
    kn_models_free(models);
    free(files);
    free(o.sets);
    return kn_launch_end(&launch, status);
}
