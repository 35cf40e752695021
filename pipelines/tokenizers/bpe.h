/* kn_bpe: the Qwen2 byte-level BPE tokenizer (Qwen2.5-VL for Qwen-Image, Qwen3 for
 * Z-Image), as the Hugging Face fast tokenizer runs it.
 *
 * Contract:
 * - kn_bpe_load reads DIR/vocab.json, DIR/merges.txt and the added tokens of
 *   DIR/tokenizer_config.json ("added_tokens_decoder"). Malformed data fails with
 *   KN_ERR_FORMAT naming the file (and line or key); nothing is guessed.
 * - kn_bpe_encode turns UTF-8 text into ids exactly as the reference does:
 *   1. added tokens are cut out of the raw text, leftmost-longest, anywhere;
 *   2. each piece between them is NFC-normalized;
 *   3. pre-tokenized with the Qwen2 split regex
 *      (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *      (implemented by hand over code-point classes);
 *   4. each pre-token's bytes are BPE-merged by merge rank (lowest first, leftmost
 *      on ties). Nothing is added around the ids (no BOS/EOS).
 *   Input that is not valid UTF-8 fails with KN_ERR_INVALID and the byte offset:
 *   the reference (a Python str) cannot hold such input, so there is nothing to
 *   match and replacing bytes would hide a caller bug. NUL bytes are ordinary text.
 * - A loaded kn_bpe is immutable: encode may run concurrently from many threads.
 * - *ids is malloc'ed by encode (NULL when *n == 0) and freed by the caller. */
#ifndef KN_BPE_H
#define KN_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"

typedef struct kn_bpe kn_bpe;

int kn_bpe_load(kn_bpe **out, const char *dir, kn_err *err);
void kn_bpe_free(kn_bpe *bpe);

int kn_bpe_encode(const kn_bpe *bpe, const char *utf8, size_t len, int32_t **ids, size_t *n, kn_err *err);

/* Number of ids: one past the largest id of the vocabulary and added tokens. */
size_t kn_bpe_vocab_size(const kn_bpe *bpe);
/* Raw bytes of token id (UTF-8 text for added tokens), or NULL when id is unused. */
const char *kn_bpe_token_bytes(const kn_bpe *bpe, int32_t id, size_t *len);
/* Id of a vocabulary key spelled as in vocab.json (the byte-level alphabet, e.g.
 * "Ġcat") or of an added token's content; -1 when there is no such key. */
int32_t kn_bpe_token_id(const kn_bpe *bpe, const char *key, size_t len);

#endif
