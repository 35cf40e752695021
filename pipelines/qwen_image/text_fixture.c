/* Fixture runner for "qwen25_vl_text": Qwen2.5-VL's text model (+ Qwen-Image
 * conditioning) against ComfyUI's outputs. The tiny fixture's head count,
 * head width, theta and eps differ from the 7B constants, so they come from
 * meta.json "config"; the sizes the loader derives from the weights are
 * checked against the same config (pipelines/common/llm_fixture.c). */
#include <jansson.h>

#include "pipelines/common/llm_fixture.h"
#include "pipelines/qwen_image/text.h"

/* Also checks the drop index against the case's "template_end" when given. */
static int emit_conditioning(const kn_fixture_case *c, kn_fixture_results *res, kn_arena *a, const kn_tensor *ids,
                             const kn_tensor *hidden, const kn_tensor *mask, kn_err *err) {
    kn_tensor cond, cond_mask;
    KN_TRY(kn_qwen_image_conditioning(a, ids, hidden, mask, &cond, &cond_mask, err));
    const json_t *te = json_object_get(c->info, "template_end");
    int64_t got = ids->ne[1] - cond.ne[1];
    if (json_is_integer(te) && json_integer_value(te) != got)
        return kn_fail(err, KN_ERR_INVALID, "template_end %lld, meta.json says %lld", (long long)got,
                       (long long)json_integer_value(te));
    return kn_fixture_emit(res, "out.conditioning", &cond, err);
}

int kn_qwen25vl_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    kn_llm_fixture fx;
    kn_tensor hidden, prenorm;
    int rc = kn_llm_fixture_open(c, &kn_qwen25vl_7b, &fx, err);
    if (!rc && kn_llm_forward(c->ctx, &fx.m, fx.arena, &fx.ids, fx.mask,
                              &(kn_llm_outputs){&hidden, &prenorm, NULL, 0})) {
        *err = c->ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.hidden_states", &hidden, err);
    if (!rc) rc = kn_fixture_emit(res, "out.last_hidden_prenorm", &prenorm, err);
    if (!rc && kn_st_find(c->data, "out.conditioning"))
        rc = emit_conditioning(c, res, fx.arena, &fx.ids, &hidden, fx.mask, err);
    if (rc) kn_err_wrap(err, "qwen25_vl_text fixture");
    kn_llm_fixture_close(&fx);
    return rc;
}
