/* Fixture runner for "qwen3_text": Qwen3-4B as Z-Image conditions on it
 * (out.conditioning: layer -2, no final norm) plus the last layer after the
 * final norm (out.hidden_states). */
#include "pipelines/common/llm_fixture.h"
#include "pipelines/z_image/text.h"

int kn_qwen3_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err) {
    kn_llm_fixture fx;
    kn_tensor hidden, cond;
    int rc = kn_llm_fixture_open(c, &kn_qwen3_4b, &fx, err);
    if (!rc && kn_llm_forward(c->ctx, &fx.m, fx.arena, &fx.ids, fx.mask,
                              &(kn_llm_outputs){&hidden, NULL, &cond, KN_Z_IMAGE_TEXT_LAYER})) {
        *err = c->ctx->err;
        rc = err->code;
    }
    if (!rc) rc = kn_fixture_emit(res, "out.hidden_states", &hidden, err);
    if (!rc) rc = kn_fixture_emit(res, "out.conditioning", &cond, err);
    if (rc) kn_err_wrap(err, "qwen3_text fixture");
    kn_llm_fixture_close(&fx);
    return rc;
}
