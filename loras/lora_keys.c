/* The key map: ComfyUI's model_lora_keys_unet built from a family's
 * kn_key_alias rules (pipelines/family.h) over the registered tensors. */
#include <stdlib.h>
#include <string.h>

#include "loras/lora_impl.h"

int kn_lora_find_target(const kn_lora_model *m, const char *key) {
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->t[i].key, key) == 0) return i;
    return -1;
}

void kn_lora_keys_free(kn_lora_model *m) {
    for (int i = 0; i < m->n_stems; i++) free(m->stems[i].name);
    free(m->stems);
    m->stems = NULL;
    m->n_stems = 0;
}

typedef struct builder {
    kn_lora_model *m;
    int cap;
    kn_err *err;
} builder;

/* Appends prefix + name[0, len) with '#' -> index and, when underscored, '.' -> '_'. */
static int add(builder *b, const char *prefix, const char *name, size_t len, const char *index, size_t index_len,
               int underscored, place at) {
    kn_lora_model *m = b->m;
    if (m->n_stems == b->cap) {
        int cap = b->cap ? 2 * b->cap : 1024;
        stem *s = realloc(m->stems, (size_t)cap * sizeof *s);
        if (!s) return kn_fail(b->err, KN_ERR_NOMEM, "lora: out of memory");
        m->stems = s;
        b->cap = cap;
    }
    size_t plen = strlen(prefix);
    char *s = malloc(plen + len + index_len + 1), *o = s + plen;
    if (!s) return kn_fail(b->err, KN_ERR_NOMEM, "lora: out of memory");
    memcpy(s, prefix, plen);
    for (size_t k = 0; k < len; k++) {
        if (name[k] == '#') {
            memcpy(o, index, index_len);
            o += index_len;
        } else {
            *o++ = underscored && name[k] == '.' ? '_' : name[k];
        }
    }
    *o = '\0';
    m->stems[m->n_stems] = (stem){s, at, m->n_stems};
    m->n_stems++;
    return KN_OK;
}

/* key matches pattern, whose '#' (at most one) stands for a decimal block
 * index: *index is then that index within key (length *len; 0 without '#'). */
static int match(const char *pattern, const char *key, const char **index, size_t *len) {
    const char *hash = strchr(pattern, '#');
    *len = 0;
    if (!hash) return strcmp(pattern, key) == 0;
    size_t head = (size_t)(hash - pattern);
    if (strncmp(pattern, key, head) != 0) return 0;
    const char *d = key + head;
    while (d[*len] >= '0' && d[*len] <= '9') (*len)++;
    *index = d;
    return *len > 0 && strcmp(d + *len, hash + 1) == 0;
}

/* The stems of one alias over the checkpoint's own keys. */
static int own_keys(builder *b, const kn_key_alias *a) {
    for (int i = 0; i < b->m->n; i++) {
        const char *key = b->m->t[i].key;
        size_t len = strlen(key);
        int is_weight = len > 7 && strcmp(key + len - 7, ".weight") == 0;
        if (!is_weight && !a->any_key) continue;
        place at = {i, 0, b->m->t[i].orig.ne[0], 0};
        KN_TRY(add(b, a->prefix, key, is_weight ? len - 7 : len, NULL, 0, a->underscored, at));
    }
    return KN_OK;
}

/* The stems of one alias over a rename table: each row for every tensor
 * (every block) its `to` matches. A row whose slice the tensor cannot hold
 * (an unusual hidden size) maps nothing, so its keys are reported unloaded. */
static int renamed_keys(builder *b, const kn_key_alias *a) {
    const kn_key_renames *rn = a->renames;
    int unit = kn_lora_find_target(b->m, rn->unit_key);
    int64_t H = unit >= 0 ? b->m->t[unit].orig.ne[0] : 0;
    for (int r = 0; r < rn->n; r++) {
        const kn_key_rename *row = &rn->r[r];
        for (int i = 0; i < b->m->n; i++) {
            const char *index = NULL;
            size_t len;
            if (!match(row->to, b->m->t[i].key, &index, &len)) continue;
            int64_t O = b->m->t[i].orig.ne[0];
            place at = {i, row->start * H, row->size ? row->size * H : O, row->swap_halves};
            if ((row->size && !H) || at.row0 + at.rows > O || (at.swap && at.rows % 2)) continue;
            KN_TRY(add(b, a->prefix, row->from, strlen(row->from), index, len, a->underscored, at));
        }
    }
    return KN_OK;
}

static int cmp_stem(const void *a, const void *b) {
    const stem *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->order > y->order) - (x->order < y->order);
}

int kn_lora_keys_build(kn_lora_model *m, kn_err *err) {
    kn_lora_keys_free(m);
    builder b = {m, 0, err};
    for (int r = 0; r < m->n_aliases; r++) {
        const kn_key_alias *a = &m->aliases[r];
        if (a->renames ? renamed_keys(&b, a) : own_keys(&b, a)) return err->code;
    }
    qsort(m->stems, (size_t)m->n_stems, sizeof *m->stems, cmp_stem);
    /* a name registered twice keeps its last place, as ComfyUI's key_map dict does */
    int w = 0;
    for (int i = 0; i < m->n_stems; i++) {
        if (w && strcmp(m->stems[w - 1].name, m->stems[i].name) == 0) {
            free(m->stems[w - 1].name);
            w--;
        }
        m->stems[w++] = m->stems[i];
    }
    m->n_stems = w;
    m->stems_dirty = 0;
    return KN_OK;
}

int kn_lora_keys_find(const kn_lora_model *m, const char *name, size_t len) {
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
