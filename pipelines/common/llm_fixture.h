/* What the decoder-LLM fixture runners share (qwen25_vl_text, qwen3_text):
 * the model from the case's weights with the family constants overridden
 * by meta.json "config" (the tiny models have other head counts and widths),
 * the derived sizes checked against the same config, the case's input_ids
 * and optional attention_mask, and an arena for the outputs. */
#ifndef KN_PIPELINES_LLM_FIXTURE_H
#define KN_PIPELINES_LLM_FIXTURE_H

#include "pipelines/common/llm.h"
#include "pipelines/fixture.h"

typedef struct kn_llm_fixture {
    kn_st_file *f;
    kn_llm m;
    kn_tensor ids;
    const kn_tensor *mask; /* NULL: the case has none (forward attends to every key) */
    kn_arena *arena;
} kn_llm_fixture;

int kn_llm_fixture_open(const kn_fixture_case *c, const kn_llm_consts *family, kn_llm_fixture *fx, kn_err *err);
/* The model alone, from f's "model." weights with the family constants that
 * `config` (a meta.json config object) overrides, sizes checked against it. */
int kn_llm_fixture_load(const json_t *config, const kn_llm_consts *family, const kn_st_file *f, kn_llm *m,
                        kn_err *err);
void kn_llm_fixture_close(kn_llm_fixture *fx);

#endif
