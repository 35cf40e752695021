/* Fixture runner for "clip_l": CLIP-L's text model against ComfyUI's outputs
 * (hidden states, clip-skip layer -2 with and without the final norm, the
 * pooled vector Flux takes). The tiny model's head count comes from
 * meta.json "config" (num_attention_heads, head_dim). */
#include "pipelines/fixture.h"
#include "pipelines/flux/clip_l.h"

int kn_clip_l_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    char path[4096];
    kn_st_file *f = NULL;
    kn_arena *arena = NULL;
    kn_clip_text m = {0};
    kn_clip_text_consts k = kn_clip_l_consts;
    k.head_dim = (int64_t)kn_fixture_config_num(c, "head_dim", (double)k.head_dim);
    k.eps = (float)kn_fixture_config_num(c, "layer_norm_eps", k.eps);
    kn_tensor ids, hidden, pooled, projected, raw, normed;
    int rc = kn_fixture_weights_path(c, path, sizeof path, err);
    if (!rc) rc = kn_st_open(&f, path, err);
    if (!rc) rc = kn_clip_text_load(&m, f, &k, err);
    if (!rc) rc = kn_fixture_input(c, "input_ids", &ids, err);
    if (!rc) rc = kn_arena_create(&arena, KN_DEV_CPU, err);
    if (!rc && kn_clip_text_forward(c->ctx, &m, arena, &ids,
                                    &(kn_clip_text_outputs){&hidden, &pooled, &projected, &raw, &normed, -2})) {
        *err = c->ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.hidden_states", &hidden, err);
    if (!rc) rc = kn_fixture_emit(res, "out.pooled", &pooled, err);
    if (!rc) rc = kn_fixture_emit(res, "out.pooled_projected", &projected, err);
    if (!rc) rc = kn_fixture_emit(res, "out.penultimate_raw", &raw, err);
    if (!rc) rc = kn_fixture_emit(res, "out.penultimate_normed", &normed, err);
    if (rc) kn_err_wrap(err, "clip_l fixture");
    kn_arena_destroy(arena);
    kn_clip_text_free(&m);
    kn_st_close(f);
    return rc;
}
