/* Fingerprints of the files a node's inputs name (nodes/changed.h). */
#include "nodes/changed.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sha256.h"
#include "nodes/model_store.h"

/* True when a COMBO value is one of the input's fixed choices, not a file. */
static int fixed_choice(const kn_input_spec *in, const char *v) {
    for (const char *const *o = in->options; o && *o; o++)
        if (strcmp(*o, v) == 0) return 1;
    return 0;
}

static int hash_file(kn_node_call *c, const char *input, const char *path, char *out, size_t len) {
    FILE *f = fopen(path, "rb");
    if (!f) return kn_node_fail(c, input, KN_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    kn_sha256 s;
    kn_sha256_init(&s);
    unsigned char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) kn_sha256_update(&s, buf, n);
    int failed = ferror(f);
    fclose(f);
    if (failed) return kn_node_fail(c, input, KN_ERR_IO, "cannot read %s", path);
    unsigned char digest[32];
    char hex[KN_SHA256_HEX];
    kn_sha256_final(&s, digest);
    kn_sha256_hex(digest, hex);
    snprintf(out, len, "sha256:%s", hex);
    return KN_OK;
}

static int stamp_file(kn_node_call *c, const char *input, const char *path, char *out, size_t len) {
    kn_file_stamp st;
    kn_err e;
    kn_err_clear(&e);
    if (kn_file_stamp_of(path, &st, &e)) return kn_node_fail(c, input, e.code, "%s", e.msg);
    snprintf(out, len, "%lld:%lld:%llu", (long long)st.size, (long long)st.mtime_ns, (unsigned long long)st.ino);
    return KN_OK;
}

static int fingerprint(kn_node_call *c, char *fp, int hash) {
    size_t used = 0;
    fp[0] = '\0';
    for (int i = 0; i < c->cls->n_inputs; i++) {
        const kn_input_spec *in = &c->cls->inputs[i];
        const kn_value *v = &c->in[i];
        if (in->kind != KN_INPUT_COMBO || !in->folder || v->kind != KN_VALUE_STRING || fixed_choice(in, v->s)) continue;
        char *path = NULL, one[128];
        kn_err e;
        kn_err_clear(&e);
        if (kn_models_resolve(c->env->models, in->folder, v->s, &path, &e))
            return kn_node_fail(c, in->name, e.code, "%s", e.msg);
        int rc = hash ? hash_file(c, in->name, path, one, sizeof one) : stamp_file(c, in->name, path, one, sizeof one);
        free(path);
        if (rc) return rc;
        int w = snprintf(fp + used, KN_CHANGED_MAX - used, "%s%s", used ? ";" : "", one);
        if (w < 0 || (size_t)w >= KN_CHANGED_MAX - used)
            return kn_node_fail(c, in->name, KN_ERR_INVALID, "too many files to fingerprint");
        used += (size_t)w;
    }
    return KN_OK;
}

int kn_changed_file_stamps(kn_node_call *c, char *fp) { return fingerprint(c, fp, 0); }
int kn_changed_file_hashes(kn_node_call *c, char *fp) { return fingerprint(c, fp, 1); }
