/* kn_clip_bpe: CLIP-L's tokenizer (Flux.1's clip_l; also SD1.x, SDXL, SD3), as the
 * Hugging Face fast tokenizer runs it (what transformers' CLIPTokenizer(Fast) runs on
 * ComfyUI's comfy/sd1_tokenizer files). Rules: tests/fixtures/tokenizers/README.md.
 *
 * Contract:
 * - kn_clip_bpe_load reads DIR/vocab.json, DIR/merges.txt (the byte-level BPE of bpe.h)
 *   and the bos/eos/unk/pad tokens of DIR/tokenizer_config.json, which must be
 *   vocabulary keys. Malformed data fails with KN_ERR_FORMAT naming the file.
 * - kn_clip_bpe_encode turns UTF-8 text into ids exactly as the reference does:
 *   1. normalize: NFC (Unicode 9.0), every run of White_Space becomes one space,
 *      lowercase (Rust's char::to_lowercase, Unicode 16.0);
 *   2. the special tokens (<|startoftext|>, <|endoftext|>) are cut out of the
 *      normalized text, leftmost-longest, anywhere (so <|ENDOFTEXT|> is one too);
 *   3. pre-tokenize: the successive matches of
 *      's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ (whitespace between
 *      them is dropped);
 *   4. BPE over each pre-token's bytes, "</w>" on its last symbol.
 *   With specials, [bos] + ids + [eos]. Invalid UTF-8 fails with KN_ERR_INVALID and
 *   the byte offset, as in kn_bpe_encode; NUL bytes are ordinary text.
 * - A loaded kn_clip_bpe is immutable: encode may run concurrently from many threads.
 * - *ids is malloc'ed by encode (NULL when *n == 0) and freed by the caller. */
#ifndef KN_CLIP_BPE_H
#define KN_CLIP_BPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"

typedef struct kn_clip_bpe kn_clip_bpe;

int kn_clip_bpe_load(kn_clip_bpe **out, const char *dir, kn_err *err);
void kn_clip_bpe_free(kn_clip_bpe *clip);

int kn_clip_bpe_encode(const kn_clip_bpe *clip, const char *utf8, size_t len, bool specials, int32_t **ids, size_t *n,
                   kn_err *err);

/* Id of a vocabulary key spelled as in vocab.json (the byte-level alphabet, e.g.
 * "cat</w>"); -1 when there is no such key. */
int32_t kn_clip_bpe_token_id(const kn_clip_bpe *clip, const char *key, size_t len);

#endif
