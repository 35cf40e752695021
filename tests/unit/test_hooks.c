/* Tests for the class hooks (nodes/node.h) and what they feed: caching keyed
 * on the files a node reads (graph/executor.h), the model store keyed by
 * file stamp (nodes/model_store.h), validation for running
 * (graph/validate.h): classes Kiln cannot run and validate hooks. Runs the
 * tiny Qwen-Image models from a scratch models root under $KN_TEST_TMP
 * whose VAE is a real copy, so it can be replaced on disk between prompts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "graph/executor.h"
#include "graph/workflow.h"
#include "kernels/sha256.h"

static char tmp[1024], root[1100], input_dir[1100], out_dir[1100], vae_path[1200];

/* ---- helpers -------------------------------------------------------------------- */

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    unsigned char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static int write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Replaces `path` the way a download or `cp` + `mv` does: a new file renamed over it. */
static int replace_file(const char *path, const void *data, size_t len) {
    char part[4200];
    snprintf(part, sizeof part, "%s.part", path);
    return write_file(part, data, len) || rename(part, path) ? -1 : 0;
}

static json_t *load_prompt(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", KN_SOURCE_DIR, name);
    json_error_t e;
    json_t *p = json_load_file(path, 0, &e);
    if (!p) fprintf(stderr, "cannot load %s: %s\n", path, e.text);
    return p;
}

static int has_id(const json_t *ids, const char *id) {
    for (size_t i = 0; i < json_array_size(ids); i++)
        if (strcmp(json_string_value(json_array_get(ids, i)), id) == 0) return 1;
    return 0;
}

static int ids_are(const json_t *ids, const char *const *want, size_t n) {
    if (json_array_size(ids) != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (!has_id(ids, want[i])) return 0;
    return 1;
}

static char *dumps(const json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT);
    return s ? s : strdup("?");
}

/* The models root: the tiny DiT and text encoder linked, the VAE copied. */
static int make_root(void) {
    const char *base = getenv("KN_TEST_TMP");
    snprintf(tmp, sizeof tmp, "%s/test_hooks_work", base ? base : ".");
    snprintf(root, sizeof root, "%s/models", tmp);
    snprintf(input_dir, sizeof input_dir, "%s/input", tmp);
    snprintf(out_dir, sizeof out_dir, "%s/output", tmp);
    snprintf(vae_path, sizeof vae_path, "%s/vae/qwen_image_vae.safetensors", root);
    char cmd[20000];
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && mkdir -p '%s/diffusion_models' '%s/text_encoders' '%s/vae' '%s' '%s' && "
             "ln -s \"$(realpath '%s/../models/diffusion_models/qwen_image_fp8_e4m3fn.safetensors')\" '%s/diffusion_models/' && "
             "ln -s \"$(realpath '%s/../models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors')\" '%s/text_encoders/' && "
             "cp '%s/../models/vae/qwen_image_vae.safetensors' '%s'",
             tmp, root, root, root, input_dir, out_dir, base ? base : ".", root, base ? base : ".", root,
             base ? base : ".", vae_path);
    return system(cmd);
}

/* The VAE with its last decoder bias shifted: every decoded pixel changes. */
static unsigned char *shifted_vae(const unsigned char *vae, size_t len) {
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | vae[i];
    json_t *header = json_loadb((const char *)vae + 8, (size_t)hlen, 0, NULL);
    json_t *offsets = json_object_get(json_object_get(header, "decoder.head.2.bias"), "data_offsets");
    size_t begin = (size_t)json_integer_value(json_array_get(offsets, 0));
    unsigned char *out = malloc(len);
    if (out && offsets) {
        memcpy(out, vae, len);
        for (int k = 0; k < 3; k++) {
            float b;
            memcpy(&b, out + 8 + hlen + begin + 4 * (size_t)k, 4);
            b += 0.5f;
            memcpy(out + 8 + hlen + begin + 4 * (size_t)k, &b, 4);
        }
    }
    json_decref(header);
    if (!offsets) {
        free(out);
        out = NULL;
    }
    return out;
}

/* ---- SHA-256 -------------------------------------------------------------------- */

static void test_sha256(void) {
    static const struct {
        const char *text, *hex;
    } known[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        kn_sha256 s;
        unsigned char d[32];
        char hex[KN_SHA256_HEX];
        kn_sha256_init(&s);
        kn_sha256_update(&s, known[i].text, strlen(known[i].text));
        kn_sha256_final(&s, d);
        kn_sha256_hex(d, hex);
        CHECK(strcmp(hex, known[i].hex) == 0, "sha256('%s') = %s", known[i].text, hex);
    }
    /* FIPS 180-2's million 'a's, fed in uneven pieces across block edges */
    static char a[1000];
    memset(a, 'a', sizeof a);
    kn_sha256 s;
    kn_sha256_init(&s);
    for (size_t done = 0, step = 1; done < 1000000; done += step, step = step % 997 + 1)
        kn_sha256_update(&s, a, done + step > 1000000 ? 1000000 - done : step);
    unsigned char d[32];
    char hex[KN_SHA256_HEX];
    kn_sha256_final(&s, d);
    kn_sha256_hex(d, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
          "sha256(a x 1e6) = %s", hex);
}

/* ---- the model store ------------------------------------------------------------- */

static int destroyed;
static void count_destroy(kn_object *o) {
    destroyed++;
    free(o);
}

static void test_store(kn_models *m) {
    char path[4200];
    snprintf(path, sizeof path, "%s/store_probe.bin", tmp);
    kn_err err;
    kn_err_clear(&err);
    CHECK(write_file(path, "one", 3) == 0, "write %s", path);
    kn_model_key k1, k2;
    CHECK(kn_model_key_of(&k1, "probe", path, &err) == KN_OK, "%s", err.msg);
    kn_object *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    kn_object_init(a, "PROBE", count_destroy);
    kn_object_init(b, "PROBE", count_destroy);
    CHECK(kn_models_put(m, &k1, a, NULL, &err) == KN_OK, "%s", err.msg);
    kn_object *got = kn_models_get(m, &k1);
    CHECK(got == a, "the stored object is found under its key");
    kn_object_release(got);
    kn_model_key other = k1;
    other.kind = "other";
    CHECK(kn_models_get(m, &other) == NULL, "another kind of load of the same file is another entry");

    CHECK(replace_file(path, "two", 3) == 0, "replace %s", path);
    CHECK(kn_model_key_of(&k2, "probe", path, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_models_get(m, &k2) == NULL, "a replaced file (same name and size) is not served from the store");
    CHECK(kn_models_put(m, &k2, b, NULL, &err) == KN_OK, "%s", err.msg);
    kn_object_release(a);
    CHECK(destroyed == 1, "the replaced file's object is released by the store (%d destroyed)", destroyed);
    got = kn_models_get(m, &k2);
    CHECK(got == b, "the new file's object is served");
    kn_object_release(got);
    kn_object_release(b);
    CHECK(destroyed == 1, "the store keeps its reference");

    unlink(path);
    CHECK(kn_model_key_of(&k2, "probe", path, &err) == KN_ERR_NOT_FOUND && strstr(err.msg, "store_probe.bin"),
          "a vanished file: not found, naming it: %s", err.msg);
}

/* Residency: probes of fixed sizes; release counts and keeps what the probe says it keeps. */
typedef struct probe {
    kn_object base;
    uint64_t bytes, kept;
    int released;
} probe;

static uint64_t probe_bytes(const kn_object *o, uint64_t *kept) {
    *kept = ((const probe *)o)->kept;
    return ((const probe *)o)->bytes;
}

static void probe_release(kn_object *o) { ((probe *)o)->released++; }

static const kn_resident_ops probe_ops = {probe_bytes, probe_release};

static void free_probe(kn_object *o) { free(o); }

static probe *put_probe(kn_models *m, const char *name, uint64_t bytes, uint64_t kept) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    kn_err err;
    kn_err_clear(&err);
    kn_model_key key;
    probe *p = calloc(1, sizeof *p);
    kn_object_init(&p->base, "PROBE", free_probe);
    p->bytes = bytes;
    p->kept = kept;
    CHECK(write_file(path, "x", 1) == 0 && kn_model_key_of(&key, "probe", path, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_models_put(m, &key, &p->base, &probe_ops, &err) == KN_OK, "%s", err.msg);
    kn_object_release(&p->base); /* the store's reference keeps it */
    return p;
}

static void test_residency(kn_models *m) {
    kn_models_unload(m);
    kn_models_set_budget(m, 1000);
    probe *te = put_probe(m, "te.bin", 600, 0), *dit = put_probe(m, "dit.bin", 700, 100);
    CHECK(te->released == 1 && !dit->released, "loading the DiT over the budget released the text encoder (%d %d)",
          te->released, dit->released);
    CHECK(kn_models_resident_bytes(m) == 700, "counted: the DiT alone (%llu)",
          (unsigned long long)kn_models_resident_bytes(m));
    kn_object *te_obj = &te->base, *dit_obj = &dit->base;
    kn_models_use(m, &te_obj, 1);
    CHECK(dit->released == 1 && te->released == 1, "running the text encoder released the DiT (%d)", dit->released);
    CHECK(kn_models_resident_bytes(m) == 700, "the DiT's kept heap stays counted: 600 + 100 (%llu)",
          (unsigned long long)kn_models_resident_bytes(m));
    kn_models_use(m, &te_obj, 1);
    CHECK(dit->released == 1 && te->released == 1, "within the budget nothing more is released");
    probe *vae = put_probe(m, "vae.bin", 200, 0);
    CHECK(!vae->released && te->released == 1, "a small VAE fits beside the text encoder (%llu)",
          (unsigned long long)kn_models_resident_bytes(m));
    kn_models_use(m, &dit_obj, 1);
    CHECK(te->released == 2 && vae->released == 0, "the DiT releases the least recently used first: the text encoder");
    probe *big = put_probe(m, "big.bin", 5000, 0);
    CHECK(!big->released && dit->released == 2 && vae->released == 1,
          "a model above the whole budget is kept, everything else released (%d %d %d)", big->released,
          dit->released, vae->released);
    kn_object *both[2] = {&big->base, &vae->base};
    kn_models_use(m, both, 2);
    CHECK(!big->released && vae->released == 1, "what the node runs is never released");
    kn_models_unload(m);
    kn_models_set_budget(m, 0);
}

/* ---- caching on the files nodes read ----------------------------------------------- */

typedef struct run_out {
    int rc;
    json_t *executed, *error;
    unsigned char *png; /* SaveImage 60's file */
    size_t png_len;
} run_out;

static run_out run(kn_executor *ex, kn_models *m, json_t *prompt) {
    run_out o = {0};
    kn_folder_lister lister = kn_models_lister(m);
    kn_node_env env = kn_executor_env(ex);
    kn_validation v = {0};
    kn_exec_result res = {0};
    kn_err err;
    kn_err_clear(&err);
    json_t *copy = json_deep_copy(prompt);
    o.rc = kn_validate_prompt(copy, NULL, &lister, &env, &v, &err);
    CHECK(o.rc == KN_OK, "validation: %s", err.msg);
    if (o.rc == KN_OK) o.rc = kn_executor_run(ex, copy, &v, NULL, "p", &res, &err);
    o.executed = json_incref(res.executed);
    o.error = json_incref(res.error);
    const char *name = json_string_value(
        json_object_get(json_array_get(json_object_get(json_object_get(res.outputs, "60"), "images"), 0), "filename"));
    if (name) {
        char path[8300];
        snprintf(path, sizeof path, "%s/%s", out_dir, name);
        o.png = read_file(path, &o.png_len);
    }
    kn_exec_result_free(&res);
    kn_validation_free(&v);
    json_decref(copy);
    return o;
}

static void run_out_free(run_out *o) {
    json_decref(o->executed);
    json_decref(o->error);
    free(o->png);
}

static int same_png(const run_out *a, const run_out *b) {
    return a->png && b->png && a->png_len == b->png_len && memcmp(a->png, b->png, a->png_len) == 0;
}

/* A VAE replaced under the same name re-runs VAELoader, VAEDecode and
 * SaveImage and decodes with the new weights; a vanished one fails the
 * loader as a node error; the old file back renders the first image. */
static void test_replaced_model(kn_executor *ex, kn_models *m) {
    json_t *t2i = load_prompt("workflows/qwen_image_t2i.api.json");
    size_t vae_len;
    unsigned char *vae = read_file(vae_path, &vae_len);
    unsigned char *shifted = vae ? shifted_vae(vae, vae_len) : NULL;
    CHECK(t2i && vae && shifted, "prompt and VAE copies");
    if (!t2i || !shifted) goto done;

    run_out first = run(ex, m, t2i), again = run(ex, m, t2i);
    char *s = dumps(first.executed);
    CHECK(first.rc == KN_OK && json_array_size(first.executed) == 10 && first.png, "first run executes all: %s", s);
    free(s);
    CHECK(again.rc == KN_OK && json_array_size(again.executed) == 0, "an unchanged re-run is served from the cache");

    CHECK(replace_file(vae_path, shifted, vae_len) == 0, "replace the VAE");
    run_out replaced = run(ex, m, t2i);
    static const char *const vae_and_after[] = {"39", "8", "60"};
    s = dumps(replaced.executed);
    CHECK(replaced.rc == KN_OK && ids_are(replaced.executed, vae_and_after, 3),
          "a replaced VAE re-runs its loader and what follows, nothing else: %s", s);
    free(s);
    CHECK(replaced.png && !same_png(&first, &replaced), "the new VAE is loaded, not the stored old one");

    /* Vanished after validation: the changed hook fails and so does the node. */
    kn_folder_lister lister = kn_models_lister(m);
    kn_node_env env = kn_executor_env(ex);
    kn_validation v = {0};
    kn_exec_result res = {0};
    kn_err err;
    kn_err_clear(&err);
    json_t *copy = json_deep_copy(t2i);
    CHECK(kn_validate_prompt(copy, NULL, &lister, &env, &v, &err) == KN_OK, "%s", err.msg);
    unlink(vae_path);
    int rc = kn_executor_run(ex, copy, &v, NULL, "gone", &res, &err);
    const json_t *data = json_object_get(res.error, "data");
    const char *msg = json_string_value(json_object_get(data, "exception_message"));
    CHECK(rc != KN_OK && strcmp(json_string_value(json_object_get(res.error, "type")), "execution_error") == 0 &&
              strcmp(json_string_value(json_object_get(data, "node_id")), "39") == 0 && msg &&
              strstr(msg, "vae_name") && strstr(msg, "qwen_image_vae.safetensors"),
          "a vanished VAE fails node 39 naming the input and file: %s", msg ? msg : err.msg);
    CHECK(json_array_size(res.executed) == 0, "nothing ran before it");
    kn_exec_result_free(&res);
    kn_validation_free(&v);
    json_decref(copy);

    CHECK(replace_file(vae_path, vae, vae_len) == 0, "restore the VAE");
    run_out restored = run(ex, m, t2i);
    s = dumps(restored.executed);
    CHECK(restored.rc == KN_OK && ids_are(restored.executed, vae_and_after, 3), "the restored VAE re-runs: %s", s);
    free(s);
    CHECK(same_png(&first, &restored), "and renders the first image again");
    run_out_free(&first);
    run_out_free(&again);
    run_out_free(&replaced);
    run_out_free(&restored);
done:
    free(vae);
    free(shifted);
    json_decref(t2i);
}

/* Writes png padded with zeros after its IEND chunk (decoders stop there) to len bytes. */
static int write_padded(const char *path, const unsigned char *png, size_t png_len, size_t len) {
    unsigned char *buf = calloc(1, len);
    int rc = buf ? (memcpy(buf, png, png_len), write_file(path, buf, len)) : -1;
    free(buf);
    return rc;
}

/* An input image overwritten in place with other pixels (same name) re-runs
 * LoadImage and what follows; the loaders stay cached. The overwrite keeps
 * size, inode and mtime, so only the content hash can tell. */
static void test_overwritten_image(kn_executor *ex, kn_models *m) {
    json_t *t2i = load_prompt("workflows/qwen_image_t2i.api.json");
    json_t *i2i = load_prompt("workflows/qwen_image_i2i.api.json");
    if (!t2i || !i2i) {
        CHECK(0, "prompts");
        return;
    }
    json_t *t2i_b = json_deep_copy(t2i);
    json_object_set_new(json_object_get(json_object_get(t2i_b, "3"), "inputs"), "seed", json_integer(777));
    run_out a = run(ex, m, t2i), b = run(ex, m, t2i_b);
    char image[4200];
    snprintf(image, sizeof image, "%s/example.png", input_dir);
    size_t len = a.png_len > b.png_len ? a.png_len : b.png_len;
    struct stat before, after;
    CHECK(a.png && b.png && !same_png(&a, &b) && write_padded(image, a.png, a.png_len, len) == 0 &&
              stat(image, &before) == 0,
          "two input images");

    run_out first = run(ex, m, i2i), cached = run(ex, m, i2i);
    CHECK(first.rc == KN_OK && has_id(first.executed, "71") && first.png, "i2i runs LoadImage");
    CHECK(cached.rc == KN_OK && json_array_size(cached.executed) == 0, "an unchanged re-queue is served from the cache");
    struct timespec times[2] = {before.st_atim, before.st_mtim};
    CHECK(b.png && write_padded(image, b.png, b.png_len, len) == 0 && utimensat(AT_FDCWD, image, times, 0) == 0 &&
              stat(image, &after) == 0 && after.st_ino == before.st_ino && after.st_size == before.st_size &&
              after.st_mtim.tv_sec == before.st_mtim.tv_sec && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec,
          "overwrite example.png in place, keeping size, inode and mtime");
    run_out second = run(ex, m, i2i);
    static const char *const image_and_after[] = {"71", "72", "3", "8", "60"};
    char *s = dumps(second.executed);
    CHECK(second.rc == KN_OK && ids_are(second.executed, image_and_after, 5),
          "the overwritten image re-runs LoadImage and what follows, not the loaders: %s", s);
    free(s);
    CHECK(second.png && !same_png(&first, &second), "the new pixels give a new output");
    run_out_free(&a);
    run_out_free(&b);
    run_out_free(&first);
    run_out_free(&cached);
    run_out_free(&second);
    json_decref(t2i);
    json_decref(t2i_b);
    json_decref(i2i);
}

/* ---- validation for running -------------------------------------------------------- */

static json_t *validate_for_run(kn_executor *ex, kn_models *m, json_t *prompt, int *status) {
    kn_folder_lister lister = kn_models_lister(m);
    kn_node_env env = kn_executor_env(ex);
    kn_validation v = {0};
    kn_err err;
    kn_err_clear(&err);
    *status = kn_validate_prompt(prompt, NULL, &lister, &env, &v, &err);
    json_t *body = kn_validation_body(&v);
    if (*status == KN_OK || *status == KN_ERR_INVALID) kn_validation_free(&v);
    return body;
}

static const json_t *node_error(const json_t *body, const char *node, const char *type) {
    const json_t *errors = json_object_get(json_object_get(json_object_get(body, "node_errors"), node), "errors");
    for (size_t i = 0; i < json_array_size(errors); i++)
        if (strcmp(json_string_value(json_object_get(json_array_get(errors, i), "type")), type) == 0)
            return json_array_get(errors, i);
    return NULL;
}

/* A class the registry knows and Kiln cannot run whose first output KSampler
 * takes (*input: that input), or NULL when every such class runs. */
static const kn_node_class *unrunnable_ksampler_input(const char **input) {
    const kn_node_class *ks = kn_registry_find("KSampler");
    for (int i = 0; i < kn_registry_count(); i++) {
        const kn_node_class *c = kn_registry_at(i);
        if (kn_node_exec_find(c->name) || c->n_outputs < 1) continue;
        for (int k = 0; k < ks->n_inputs; k++)
            if (ks->inputs[k].kind == KN_INPUT_LINK && strcmp(ks->inputs[k].type, c->outputs[0].type) == 0) {
                *input = ks->inputs[k].name;
                return c;
            }
    }
    return NULL;
}

static void test_validation(kn_executor *ex, kn_models *m) {
    json_t *t2i = load_prompt("workflows/qwen_image_t2i.api.json");
    if (!t2i) return;
    int st;
    json_t *p = json_deep_copy(t2i), *body;

    /* The validate hook: VAELoader refuses pixel_space, which Kiln does not run. */
    json_object_set_new(json_object_get(json_object_get(p, "39"), "inputs"), "vae_name", json_string("pixel_space"));
    body = validate_for_run(ex, m, p, &st);
    const json_t *e = node_error(body, "39", "custom_validation_failed");
    const char *details = json_string_value(json_object_get(e, "details"));
    CHECK(st == KN_ERR_INVALID && e && details && strcmp(details, "vae_name - pixel_space is not supported") == 0 &&
              strcmp(json_string_value(json_object_get(json_object_get(e, "extra_info"), "input_name")),
                     "vae_name") == 0,
          "validate hook failure names node 39 and vae_name: %s", details ? details : "(none)");
    json_decref(body);
    kn_validation v;
    kn_err err;
    CHECK(kn_validate_prompt(p, NULL, NULL, NULL, &v, &err) == KN_OK, "schema-only validation runs no hooks");
    kn_validation_free(&v);
    json_decref(p);

    /* An unimplemented class in the chain: one whose first output KSampler takes, between it and its source. */
    const char *input = NULL;
    const kn_node_class *cls = unrunnable_ksampler_input(&input);
    if (!cls) printf("test_hooks: every registered class runs: no unimplemented class to chain\n");
    if (cls) {
        p = json_deep_copy(t2i);
        json_object_set_new(p, "90", json_pack("{s:s, s:{}, s:{s:s}}", "class_type", cls->name, "inputs", "_meta",
                                               "title", "Guide me"));
        json_object_set_new(json_object_get(json_object_get(p, "3"), "inputs"), input, json_pack("[s,i]", "90", 0));
        body = validate_for_run(ex, m, p, &st);
        e = node_error(body, "90", "missing_node_type");
        const char *message = json_string_value(json_object_get(e, "message"));
        const char *type = json_string_value(json_object_get(json_object_get(body, "error"), "type"));
        details = json_string_value(json_object_get(e, "details"));
        char want[160];
        snprintf(want, sizeof want, "Node 'Guide me' (%s) is not implemented by Kiln.", cls->name);
        CHECK(st == KN_ERR_INVALID && type && strcmp(type, "prompt_outputs_failed_validation") == 0,
              "refused with prompt_outputs_failed_validation");
        CHECK(message && strcmp(message, want) == 0, "the node is named: %s", message ? message : "(none)");
        CHECK(details && strncmp(details, "Kiln runs: ", 11) == 0 && strstr(details, "KSampler") &&
                  strstr(details, "CFGNorm") && !strstr(details, cls->name),
              "details list what runs: %s", details ? details : "(none)");
        const char *class_type =
            json_string_value(json_object_get(json_object_get(json_object_get(body, "node_errors"), "90"), "class_type"));
        const char *node = json_string_value(json_object_get(json_object_get(e, "extra_info"), "node_id"));
        CHECK(class_type && strcmp(class_type, cls->name) == 0 && node && strcmp(node, "90") == 0,
              "node_errors entry names the class and node");
        json_decref(body);
        json_decref(p);
    }

    /* Every class of a shared workflow Kiln cannot run is named at once (none left in the Edit one). */
    p = load_prompt("tests/fixtures/workflows/qwen_image_edit.api.json");
    body = p ? validate_for_run(ex, m, p, &st) : NULL;
    int named = 0, missing = 0;
    const char *id;
    json_t *node;
    json_object_foreach(p, id, node) {
        const char *type = json_string_value(json_object_get(node, "class_type"));
        if (kn_node_exec_find(type)) continue;
        missing++;
        named += node_error(body, id, "missing_node_type") != NULL;
    }
    CHECK(p && st == KN_ERR_INVALID && named == missing, "qwen_image_edit: %d of %d unimplemented nodes named",
          named, missing);
    json_decref(body);
    json_decref(p);

    /* The bundled workflow validates for running as it is. */
    p = json_deep_copy(t2i);
    body = validate_for_run(ex, m, p, &st);
    CHECK(st == KN_OK && json_object_size(json_object_get(body, "node_errors")) == 0, "t2i validates for running");
    json_decref(body);
    json_decref(p);
    json_decref(t2i);
}

int main(void) {
    test_sha256();
    if (make_root() != 0) {
        fprintf(stderr, "cannot set up %s\n", root);
        return 1;
    }
    kn_models *m = NULL;
    kn_executor *ex = NULL;
    kn_err err;
    kn_err_clear(&err);
    CHECK(kn_models_new(&m, root, input_dir, &err) == KN_OK, "%s", err.msg);
    kn_executor_config cfg = {m, out_dir, out_dir, input_dir, KN_PREC_FP32, NULL};
    CHECK(m && kn_executor_new(&ex, &cfg, &err) == KN_OK, "%s", err.msg);
    if (ex) {
        test_store(m);
        test_residency(m);
        test_validation(ex, m);
        test_replaced_model(ex, m);
        test_overwritten_image(ex, m);
    }
    kn_executor_free(ex);
    kn_models_free(m);
    printf("test_hooks: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
