/* kn_spm: a SentencePiece unigram tokenizer in Hugging Face's tokenizer.json form, as
 * the Hugging Face fast tokenizer runs it: T5's (Flux.1's t5xxl, T5 v1.1 XXL), from
 * ComfyUI's comfy/text_encoders/t5_tokenizer/tokenizer.json. Rules:
 * tests/fixtures/tokenizers/README.md.
 *
 * Contract:
 * - kn_spm_load reads DIR/tokenizer.json, the file as shipped: the Unigram model
 *   (pieces with log-prob scores, unk_id), the added tokens, the normalizer, the
 *   pre-tokenizer and the post-processor. A normalizer other than [Precompiled
 *   charsmap, Strip right, Replace " {2,}" -> "▁"], a pre-tokenizer other than
 *   Metaspace("▁", prepend_scheme "first", split), a post-processor other than
 *   "text + one special token", byte fallback or added-token flags other than the
 *   plain ones are refused (KN_ERR_UNSUPPORTED) rather than run differently;
 *   malformed data fails with KN_ERR_FORMAT naming the key.
 * - kn_spm_encode turns UTF-8 text into ids exactly as the reference does:
 *   1. added tokens (<pad>, </s>, <unk>, <extra_id_N>) are cut out of the raw text,
 *      leftmost-longest, anywhere; the text between them goes on segment by segment;
 *   2. each segment: the charsmap (kn_charsmap), trailing White_Space stripped,
 *      every run of spaces one "▁"; the input's first segment (nothing before it)
 *      gets a "▁" in front unless it starts with one;
 *   3. the segment is cut before each "▁", and each piece is segmented by Viterbi:
 *      the path with the highest sum of piece scores (float64, summed along the
 *      path; on a tie the first path found, whose last piece starts earliest); a
 *      character where no one-character piece starts may also be <unk> with score
 *      min score - 10, and runs of <unk> fuse into one id.
 *   With specials, the post-processor's token (</s>) is appended. Invalid UTF-8
 *   fails with KN_ERR_INVALID and the byte offset.
 * - A loaded kn_spm is immutable: encode may run concurrently from many threads.
 * - *ids is malloc'ed by encode (NULL when *n == 0) and freed by the caller. */
#ifndef KN_SPM_H
#define KN_SPM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"

typedef struct kn_spm kn_spm;

int kn_spm_load(kn_spm **out, const char *dir, kn_err *err);
void kn_spm_free(kn_spm *t5);

int kn_spm_encode(const kn_spm *t5, const char *utf8, size_t len, bool specials, int32_t **ids, size_t *n,
                 kn_err *err);

/* Id of a piece of the vocabulary (e.g. "▁cat") or an added token's content; -1
 * when there is none. */
int32_t kn_spm_token_id(const kn_spm *t5, const char *piece, size_t len);

/* The charsmap step alone on valid UTF-8 text (what the goldens' "charsmap" field
 * shows): *out is malloc'ed (NULL when *out_len == 0). */
int kn_spm_charsmap(const kn_spm *t5, const char *utf8, size_t len, char **out, size_t *out_len, kn_err *err);

#endif
