/* Shared setup of the decoder-LLM fixture runners: see llm_fixture.h. */
#include "pipelines/common/llm_fixture.h"

#include <string.h>

static double num(const json_t *config, const char *key, double dflt) {
    const json_t *v = json_object_get(config, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static kn_llm_consts fixture_consts(const json_t *config, const kn_llm_consts *family) {
    kn_llm_consts k = *family;
    k.heads = (int64_t)num(config, "num_attention_heads", (double)k.heads);
    k.head_dim = (int64_t)num(config, "head_dim", (double)k.head_dim);
    k.rope_theta = num(config, "rope_theta", k.rope_theta);
    k.eps = (float)num(config, "rms_norm_eps", k.eps);
    return k;
}

static int check_derived(const json_t *config, const kn_llm_config *cfg, kn_err *err) {
    const struct {
        const char *key;
        int64_t got;
    } v[] = {
        {"vocab_size", cfg->vocab},
        {"hidden_size", cfg->hidden},
        {"intermediate_size", cfg->intermediate},
        {"num_hidden_layers", cfg->layers},
        {"num_key_value_heads", cfg->kv_heads},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        double want = num(config, v[i].key, (double)v[i].got);
        if (want != (double)v[i].got)
            return kn_fail(err, KN_ERR_SHAPE, "derived %s = %lld but meta.json config says %g", v[i].key,
                           (long long)v[i].got, want);
    }
    return KN_OK;
}

int kn_llm_fixture_load(const json_t *config, const kn_llm_consts *family, const kn_st_file *f, kn_llm *m,
                        kn_err *err) {
    kn_llm_consts k = fixture_consts(config, family);
    KN_TRY(kn_llm_load(m, f, "model.", &k, err));
    if (check_derived(config, &m->cfg, err)) {
        kn_llm_free(m);
        return err->code;
    }
    return KN_OK;
}

int kn_llm_fixture_open(const kn_fixture_case *c, const kn_llm_consts *family, kn_llm_fixture *fx, kn_err *err) {
    char path[4096];
    memset(fx, 0, sizeof *fx);
    int rc = kn_fixture_weights_path(c, path, sizeof path, err);
    if (!rc) rc = kn_st_open(&fx->f, path, err);
    if (!rc) rc = kn_llm_fixture_load(json_object_get(c->meta, "config"), family, fx->f, &fx->m, err);
    if (!rc) rc = kn_fixture_input(c, "input_ids", &fx->ids, err);
    if (!rc) rc = kn_arena_create(&fx->arena, KN_DEV_CPU, err);
    /* the mask is optional in the format */
    fx->mask = kn_st_find(c->data, "in.attention_mask");
    if (rc) kn_llm_fixture_close(fx);
    return rc;
}

void kn_llm_fixture_close(kn_llm_fixture *fx) {
    kn_arena_destroy(fx->arena);
    kn_llm_free(&fx->m);
    kn_st_close(fx->f);
    memset(fx, 0, sizeof *fx);
}
