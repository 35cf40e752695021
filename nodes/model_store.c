/* Model folders, name resolution and the loaded-model store. */
#include "nodes/model_store.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef KN_TOKENIZER_DIR
#define KN_TOKENIZER_DIR "tokenizers"
#endif

/* Symlinked folders are followed (os.walk(followlinks=True)); this bounds loops. */
#define KN_MODELS_MAX_DEPTH 16

typedef struct store_entry {
    char *kind, *path[KN_MODEL_KEY_FILES];
    kn_file_stamp stamp[KN_MODEL_KEY_FILES];
    int n;
    kn_object *obj;
    const kn_resident_ops *ops; /* NULL: nothing the store can size or release */
    uint64_t last_used;         /* the store's clock at its last load or use */
    int resident;               /* counted in full: its pages may be in memory */
} store_entry;

struct kn_models {
    char *root, *input_dir;
    uint64_t budget; /* bytes */
    store_entry *store;
    int n_store, cap_store;
    uint64_t clock; /* ticks at every load and use */
};

/* ComfyUI's folder names and the older aliases it also reads. */
static const struct {
    const char *folder;
    const char *dirs[2];
} kn_folders[] = {
    {"diffusion_models", {"diffusion_models", "unet"}},
    {"text_encoders", {"text_encoders", "clip"}},
    {"vae", {"vae", NULL}},
    {"loras", {"loras", NULL}},
    {"checkpoints", {"checkpoints", NULL}},
};

static const char *const model_exts[] = {".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", NULL};
static const char *const image_exts[] = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tga", ".psd",
                                         ".hdr", ".pnm", ".ppm", ".pgm", NULL};
static const char *const latent_exts[] = {".latent", NULL};

/* The input directory's top-level files of one kind: LoadImage's images, LoadLatent's latents. */
static const char *const *input_exts(const char *folder) {
    return strcmp(folder, "input") == 0 ? image_exts : strcmp(folder, "input_latents") == 0 ? latent_exts : NULL;
}

static void entry_strings_free(store_entry *e) {
    free(e->kind);
    for (int i = 0; i < KN_MODEL_KEY_FILES; i++) free(e->path[i]);
}

static void entry_clear(store_entry *e) {
    entry_strings_free(e);
    kn_object_release(e->obj);
}

int kn_models_new(kn_models **out, const char *root, const char *input_dir, kn_err *err) {
    *out = NULL;
    struct stat st;
    if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode))
        return kn_fail(err, KN_ERR_NOT_FOUND, "models folder '%s' does not exist", root);
    kn_models *m = calloc(1, sizeof *m);
    if (!m || !(m->root = strdup(root)) || !(m->input_dir = strdup(input_dir))) {
        kn_models_free(m);
        return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    }
    kn_models_set_budget(m, 0);
    *out = m;
    return KN_OK;
}

uint64_t kn_models_budget(const kn_models *m) { return m->budget; }

/* "0.5 MiB", "8.1 GiB". */
static const char *human_bytes(double b, char *buf, size_t len) {
    if (b >= 1073741824.0) snprintf(buf, len, "%.1f GiB", b / 1073741824.0);
    else snprintf(buf, len, "%.1f MiB", b / 1048576.0);
    return buf;
}

int kn_models_check_peak(kn_node_call *c, const char *input, double bytes, const char *what) {
    if (!c->env->models || bytes <= (double)c->env->models->budget) return KN_OK;
    char need[32], budget[32];
    return kn_node_fail(c, input, KN_ERR_INVALID, "%s needs about %s, above the memory budget of %s (--memory-budget)",
                        what, human_bytes(bytes, need, sizeof need),
                        human_bytes((double)c->env->models->budget, budget, sizeof budget));
}

void kn_models_set_budget(kn_models *m, uint64_t bytes) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t physical = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : (uint64_t)8 << 30;
    m->budget = bytes ? bytes : physical / 100 * KN_MEMORY_BUDGET_PERCENT;
}

void kn_models_free(kn_models *m) {
    if (!m) return;
    for (int i = 0; i < m->n_store; i++) entry_clear(&m->store[i]);
    free(m->store);
    free(m->root);
    free(m->input_dir);
    free(m);
}

void kn_models_unload(kn_models *m) {
    /* released first: a holder outside the store (the executor's cache) keeps a valid object without its pages */
    for (int i = 0; i < m->n_store; i++)
        if (m->store[i].ops) m->store[i].ops->release(m->store[i].obj);
    for (int i = 0; i < m->n_store; i++) entry_clear(&m->store[i]);
    m->n_store = 0;
}

const char *kn_models_root(const kn_models *m) { return m->root; }

const char *kn_models_relative(const kn_models *m, const char *text) {
    size_t n = strlen(m->root);
    return strncmp(text, m->root, n) == 0 && text[n] == '/' ? text + n + 1 : text;
}

const char *kn_models_tokenizer_dir(const kn_models *m) {
    const char *env = getenv("KILN_TOKENIZERS");
    return env && *env ? env : KN_TOKENIZER_DIR;
}

/* ---- listing ------------------------------------------------------------------ */

typedef struct name_list {
    char **v;
    size_t n, cap;
} name_list;

static int has_ext(const char *name, const char *const *exts) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (int i = 0; exts[i]; i++)
        if (strcasecmp(dot, exts[i]) == 0) return 1;
    return 0;
}

static int push_name(name_list *l, const char *name, kn_err *err) {
    for (size_t i = 0; i < l->n; i++) /* the same file under two alias folders is listed once */
        if (strcmp(l->v[i], name) == 0) return KN_OK;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        char **v = realloc(l->v, cap * sizeof *v);
        if (!v) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(name))) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    l->n++;
    return KN_OK;
}

/* Files under dir/rel (rel "" at the top), recursing when `recurse`. A
 * folder that does not exist lists nothing, as in ComfyUI. */
static int walk(const char *dir, const char *rel, int depth, int recurse, const char *const *exts, name_list *out,
                kn_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s%s%s", dir, *rel ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d) return KN_OK;
    int rc = KN_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* ".", "..", hidden files */
        char sub[4096], full[4096 + 256];
        if ((size_t)snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= sizeof sub) continue;
        snprintf(full, sizeof full, "%s/%s", dir, sub);
        struct stat st;
        if (stat(full, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (recurse && depth < KN_MODELS_MAX_DEPTH) rc = walk(dir, sub, depth + 1, recurse, exts, out, err);
        } else if (S_ISREG(st.st_mode) && has_ext(e->d_name, exts)) {
            rc = push_name(out, sub, err);
        }
    }
    closedir(d);
    return rc;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void names_free(name_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
}

static int folder_index(const char *folder) {
    for (size_t i = 0; i < sizeof kn_folders / sizeof kn_folders[0]; i++)
        if (strcmp(kn_folders[i].folder, folder) == 0) return (int)i;
    return -1;
}

static int list_names(kn_models *m, const char *folder, name_list *out, kn_err *err) {
    memset(out, 0, sizeof *out);
    int rc = KN_OK;
    if (input_exts(folder)) {
        rc = walk(m->input_dir, "", 0, 0, input_exts(folder), out, err);
    } else {
        int f = folder_index(folder);
        if (f < 0) return kn_fail(err, KN_ERR_INVALID, "unknown model folder '%s'", folder);
        for (int k = 0; !rc && k < 2 && kn_folders[f].dirs[k]; k++) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%s/%s", m->root, kn_folders[f].dirs[k]);
            rc = walk(dir, "", 0, 1, model_exts, out, err);
        }
    }
    if (rc) {
        names_free(out);
        return rc;
    }
    if (out->n) qsort(out->v, out->n, sizeof *out->v, cmp_names); /* v is NULL for an empty folder */
    return KN_OK;
}

int kn_models_list(kn_models *m, const char *folder, json_t *names, kn_err *err) {
    name_list l;
    int rc = list_names(m, folder, &l, err);
    for (size_t i = 0; !rc && i < l.n; i++)
        if (json_array_append_new(names, json_string(l.v[i])) != 0) rc = kn_fail(err, KN_ERR_NOMEM, "out of memory");
    names_free(&l);
    return rc;
}

static int lister_list(void *user, const char *folder, json_t *names, kn_err *err) {
    return kn_models_list(user, folder, names, err);
}

kn_folder_lister kn_models_lister(kn_models *m) { return (kn_folder_lister){lister_list, m}; }

/* ---- resolution ----------------------------------------------------------------- */

static int escapes(const char *name) {
    if (name[0] == '/' || name[0] == '\\' || strchr(name, '\\') || strchr(name, ':')) return 1;
    for (const char *p = name; *p;) { /* any ".." component */
        size_t len = strcspn(p, "/");
        if (len == 2 && p[0] == '.' && p[1] == '.') return 1;
        p += len;
        if (*p) p++;
    }
    return 0;
}

int kn_models_resolve(kn_models *m, const char *folder, const char *name, char **path, kn_err *err) {
    *path = NULL;
    if (!*name || escapes(name))
        return kn_fail(err, KN_ERR_INVALID, "'%s' is not a file name inside the %s folder", name, folder);
    name_list l;
    int rc = list_names(m, folder, &l, err);
    if (rc) return rc;
    int found = l.n && bsearch(&name, l.v, l.n, sizeof *l.v, cmp_names); /* v is NULL for an empty folder */
    names_free(&l);
    if (!found)
        return kn_fail(err, KN_ERR_NOT_FOUND, "'%s' is not in the %s folder of %s", name, folder,
                       input_exts(folder) ? m->input_dir : m->root);
    char buf[8192];
    if (input_exts(folder)) {
        snprintf(buf, sizeof buf, "%s/%s", m->input_dir, name);
    } else { /* the first alias folder holding it, as ComfyUI's get_full_path */
        int f = folder_index(folder);
        for (int k = 0; k < 2 && kn_folders[f].dirs[k]; k++) {
            struct stat st;
            snprintf(buf, sizeof buf, "%s/%s/%s", m->root, kn_folders[f].dirs[k], name);
            if (stat(buf, &st) == 0 && S_ISREG(st.st_mode)) break;
        }
    }
    if (!(*path = strdup(buf))) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    return KN_OK;
}

/* ---- store ----------------------------------------------------------------------- */

int kn_file_stamp_of(const char *path, kn_file_stamp *st, kn_err *err) {
    struct stat sb;
    if (stat(path, &sb) != 0)
        return kn_fail(err, errno == ENOENT ? KN_ERR_NOT_FOUND : KN_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
    *st = (kn_file_stamp){(int64_t)sb.st_size, (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec,
                          (uint64_t)sb.st_dev, (uint64_t)sb.st_ino};
    return KN_OK;
}

int kn_model_key_of(kn_model_key *key, const char *kind, const char *path, kn_err *err) {
    memset(key, 0, sizeof *key);
    key->kind = kind;
    return kn_model_key_add(key, path, err);
}

int kn_model_key_add(kn_model_key *key, const char *path, kn_err *err) {
    if (key->n == KN_MODEL_KEY_FILES) return kn_fail(err, KN_ERR_INVALID, "more than %d files in a model key", key->n);
    key->path[key->n] = path;
    return kn_file_stamp_of(path, &key->stamp[key->n++], err);
}

static int same_file(const store_entry *e, const kn_model_key *key) {
    if (strcmp(e->kind, key->kind) != 0 || e->n != key->n) return 0;
    for (int i = 0; i < key->n; i++)
        if (strcmp(e->path[i], key->path[i]) != 0) return 0;
    return 1;
}

static int same_stamps(const store_entry *e, const kn_model_key *key) {
    for (int i = 0; i < key->n; i++) {
        const kn_file_stamp *a = &e->stamp[i], *b = &key->stamp[i];
        if (a->size != b->size || a->mtime_ns != b->mtime_ns || a->dev != b->dev || a->ino != b->ino) return 0;
    }
    return 1;
}

/* ---- residency ------------------------------------------------------------------- */

/* What e counts against the budget: all of it while resident, else what release keeps. */
static uint64_t counted(const store_entry *e) {
    uint64_t kept = 0, all = e->ops ? e->ops->bytes(e->obj, &kept) : 0;
    return e->resident ? all : kept;
}

static int needed(const store_entry *e, kn_object *const *objs, int n) {
    for (int i = 0; i < n; i++)
        if (e->obj == objs[i]) return 1;
    return 0;
}

/* Releases the least recently used resident entries that objs[0..n) do not
 * hold until the counted total plus `extra` (files about to be loaded) fits
 * the budget, one line on stderr each. What objs hold is never released: a
 * model larger than the whole budget still runs. */
static void make_room(kn_models *m, uint64_t extra, kn_object *const *objs, int n, const char *for_path) {
    uint64_t total = extra;
    for (int i = 0; i < m->n_store; i++) total += counted(&m->store[i]);
    while (total > m->budget) {
        store_entry *lru = NULL;
        for (int i = 0; i < m->n_store; i++) {
            store_entry *e = &m->store[i];
            if (e->resident && e->ops && !needed(e, objs, n) && (!lru || e->last_used < lru->last_used)) lru = e;
        }
        if (!lru) return;
        uint64_t kept = 0, all = lru->ops->bytes(lru->obj, &kept);
        lru->ops->release(lru->obj);
        lru->resident = 0;
        total -= all - kept;
        char size[32];
        human_bytes((double)(all - kept), size, sizeof size);
        fprintf(stderr, "released %s%s%s (%s) for %s\n", kn_models_relative(m, lru->path[0]), lru->n > 1 ? " + " : "",
                lru->n > 1 ? kn_models_relative(m, lru->path[1]) : "", size, kn_models_relative(m, for_path));
    }
}

kn_object *kn_models_get(kn_models *m, const kn_model_key *key) {
    for (int i = 0; i < m->n_store; i++)
        if (same_file(&m->store[i], key) && same_stamps(&m->store[i], key)) return kn_object_retain(m->store[i].obj);
    return NULL;
}

int kn_models_put(kn_models *m, const kn_model_key *key, kn_object *obj, const kn_resident_ops *ops, kn_err *err) {
    store_entry e = {strdup(key->kind), {NULL, NULL}, {{0}}, key->n, obj, ops, ++m->clock, 1};
    int ok = e.kind != NULL;
    for (int i = 0; i < key->n; i++) {
        e.path[i] = strdup(key->path[i]);
        e.stamp[i] = key->stamp[i];
        ok = ok && e.path[i];
    }
    if (!ok) {
        entry_strings_free(&e);
        return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    }
    int slot = -1;
    for (int i = 0; i < m->n_store && slot < 0; i++)
        if (same_file(&m->store[i], key)) slot = i; /* an older stamp: nothing can hit it again */
    if (slot >= 0) {
        entry_clear(&m->store[slot]);
    } else {
        if (m->n_store == m->cap_store) {
            int cap = m->cap_store ? m->cap_store * 2 : 8;
            store_entry *s = realloc(m->store, (size_t)cap * sizeof *s);
            if (!s) {
                entry_strings_free(&e);
                return kn_fail(err, KN_ERR_NOMEM, "out of memory");
            }
            m->store = s;
            m->cap_store = cap;
        }
        slot = m->n_store++;
    }
    e.obj = kn_object_retain(obj);
    m->store[slot] = e;
    make_room(m, 0, &obj, 1, key->path[0]);
    return KN_OK;
}

void kn_models_reserve(kn_models *m, const kn_model_key *key) {
    uint64_t need = 0;
    for (int i = 0; i < key->n; i++) need += (uint64_t)key->stamp[i].size;
    make_room(m, need, NULL, 0, key->path[0]);
}

void kn_models_use(kn_models *m, kn_object *const *objs, int n) {
    const char *for_path = NULL;
    if (!m) return;
    m->clock++;
    for (int k = 0; k < n; k++) /* the message names what objs lists first */
        for (int i = 0; i < m->n_store; i++) {
            store_entry *e = &m->store[i];
            if (e->obj != objs[k]) continue;
            e->resident = 1;
            e->last_used = m->clock;
            if (!for_path) for_path = e->path[0];
        }
    if (for_path) make_room(m, 0, objs, n, for_path);
}

uint64_t kn_models_resident_bytes(const kn_models *m) {
    uint64_t total = 0;
    for (int i = 0; i < m->n_store; i++) total += counted(&m->store[i]);
    return total;
}
