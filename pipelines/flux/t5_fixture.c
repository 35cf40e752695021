/* Fixture runner for "t5_xxl": the T5 encoder against ComfyUI's outputs (Flux
 * passes no mask; one case passes it as SD3 can). Every size comes from the
 * weights, the bucket constants from meta.json "config" where it has them. */
#include <jansson.h>

#include "pipelines/fixture.h"
#include "pipelines/flux/t5.h"

int kn_t5_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    char path[4096];
    kn_st_file *f = NULL;
    kn_arena *arena = NULL;
    kn_t5 m = {0};
    kn_t5_consts k = kn_t5_xxl_consts;
    k.buckets = (int)kn_fixture_config_num(c, "relative_attention_num_buckets", k.buckets);
    k.max_distance = (int)kn_fixture_config_num(c, "relative_attention_max_distance", k.max_distance);
    k.eps = (float)kn_fixture_config_num(c, "layer_norm_epsilon", k.eps);
    kn_tensor ids, mask, hidden;
    int use_mask = json_is_true(json_object_get(c->info, "uses_attention_mask"));
    int rc = kn_fixture_weights_path(c, path, sizeof path, err);
    if (!rc) rc = kn_st_open(&f, path, err);
    if (!rc) rc = kn_t5_load(&m, f, &k, err);
    if (!rc) rc = kn_fixture_input(c, "input_ids", &ids, err);
    if (!rc && use_mask) rc = kn_fixture_input(c, "attention_mask", &mask, err);
    if (!rc) rc = kn_arena_create(&arena, KN_DEV_CPU, err);
    if (!rc && kn_t5_forward(c->ctx, &m, arena, &ids, use_mask ? &mask : NULL, &hidden)) {
        *err = c->ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.hidden_states", &hidden, err);
    if (rc) kn_err_wrap(err, "t5_xxl fixture");
    kn_arena_destroy(arena);
    kn_t5_free(&m);
    kn_st_close(f);
    return rc;
}
