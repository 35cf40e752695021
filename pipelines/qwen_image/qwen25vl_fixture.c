/* Fixture runner for "qwen25_vl_text": Qwen2.5-VL text model (+ Qwen-Image
 * conditioning) against ComfyUI's outputs. The tiny fixture's head count,
 * head width, theta and eps differ from the 7B constants, so they come from
 * meta.json "config"; the sizes the loader derives from the weights are
 * checked against the same config. */
#include <jansson.h>

#include "pipelines/qwen_image/qwen25vl.h"
#include "pipelines/fixture.h"

static kn_qwen25vl_family fixture_family(const kn_fixture_case *c) {
    kn_qwen25vl_family f = kn_qwen25vl_7b;
    f.heads = (int64_t)kn_fixture_config_num(c, "num_attention_heads", (double)f.heads);
    f.head_dim = (int64_t)kn_fixture_config_num(c, "head_dim", (double)f.head_dim);
    f.rope_theta = kn_fixture_config_num(c, "rope_theta", f.rope_theta);
    f.eps = (float)kn_fixture_config_num(c, "rms_norm_eps", f.eps);
    return f;
}

static int check_derived(const kn_fixture_case *c, const kn_qwen25vl_config *cfg, kn_err *err) {
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
        double want = kn_fixture_config_num(c, v[i].key, (double)v[i].got);
        if (want != (double)v[i].got)
            return kn_fail(err, KN_ERR_SHAPE, "derived %s = %lld but meta.json config says %g", v[i].key,
                           (long long)v[i].got, want);
    }
    return KN_OK;
}

/* Also checks the drop index against the case's "template_end" when given. */
static int emit_conditioning(const kn_fixture_case *c, kn_fixture_results *res, kn_arena *a, const kn_tensor *ids,
                             const kn_tensor *hidden, const kn_tensor *mask, kn_err *err) {
    kn_tensor cond, cond_mask;
    int rc = kn_qwen_image_conditioning(a, ids, hidden, mask, &cond, &cond_mask, err);
    if (rc) return rc;
    const json_t *te = json_object_get(c->info, "template_end");
    int64_t got = ids->ne[1] - cond.ne[1];
    if (json_is_integer(te) && json_integer_value(te) != got)
        return kn_fail(err, KN_ERR_INVALID, "template_end %lld, meta.json says %lld", (long long)got,
                       (long long)json_integer_value(te));
    return kn_fixture_emit(res, "out.conditioning", &cond, err);
}

int kn_qwen25vl_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    char path[4096];
    kn_st_file *f = NULL;
    kn_arena *a = NULL;
    kn_qwen25vl m = {0};
    kn_qwen25vl_family fam = fixture_family(c);
    kn_tensor ids, hidden, prenorm;
    /* the mask is optional in the format: forward then attends to every key */
    const kn_tensor *mask = kn_st_find(c->data, "in.attention_mask");
    int rc;
    if ((rc = kn_fixture_weights_path(c, path, sizeof path, err)) || (rc = kn_st_open(&f, path, err)) ||
        (rc = kn_qwen25vl_load(&m, f, "model.", &fam, err)) || (rc = check_derived(c, &m.cfg, err)) ||
        (rc = kn_fixture_input(c, "input_ids", &ids, err)) || (rc = kn_arena_create(&a, KN_DEV_CPU, err)))
        goto out;
    if ((rc = kn_qwen25vl_forward(c->ctx, &m, a, &ids, mask, &hidden, &prenorm))) {
        *err = c->ctx->err;
        goto out;
    }
    if ((rc = kn_fixture_emit(res, "out.hidden_states", &hidden, err)) ||
        (rc = kn_fixture_emit(res, "out.last_hidden_prenorm", &prenorm, err)))
        goto out;
    if (kn_st_find(c->data, "out.conditioning")) rc = emit_conditioning(c, res, a, &ids, &hidden, mask, err);
out:
    if (rc) kn_err_wrap(err, "qwen25vl fixture");
    kn_arena_destroy(a);
    kn_qwen25vl_free(&m);
    kn_st_close(f);
    return rc;
}
