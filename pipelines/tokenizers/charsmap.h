/* kn_charsmap: SentencePiece's precompiled character map (T5's nmt_nfkc
 * normalization: NFKC-style folding, whitespace to spaces, control characters
 * deleted), applied as the Hugging Face "Precompiled" normalizer applies it, which is
 * what ComfyUI runs.
 *
 * Format (untrusted bytes, checked): u32 LE trie_size, then trie_size bytes of
 * Darts-clone double-array units (u32 LE), then the pool of NUL-terminated UTF-8
 * replacement strings. A key is a byte string; its replacement starts at the pool
 * offset the leaf holds.
 *
 * Contract:
 * - kn_charsmap_load copies and checks the blob: a trie_size that is a nonzero
 *   multiple of 4 and fits, and a pool of valid UTF-8 (as the reference requires).
 *   Errors are KN_ERR_FORMAT with what is wrong.
 * - kn_charsmap_normalize appends the normalization of valid UTF-8 text to *out,
 *   per extended grapheme cluster (UAX #29): a cluster under 6 bytes that has a key
 *   as a prefix becomes the replacement of the shortest such key (the rest of the
 *   cluster is dropped); otherwise each code point is replaced by its own shortest
 *   prefix key's replacement, or kept. A NUL byte ends a key lookup (it cannot be
 *   in a key). A malformed trie met on the way (a walk leaving the array, a
 *   replacement off the pool or not on a character boundary, where the reference
 *   would panic) fails with KN_ERR_FORMAT; *out then holds a partial result.
 * - A loaded kn_charsmap is immutable and may be shared between threads. */
#ifndef KN_CHARSMAP_H
#define KN_CHARSMAP_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"
#include "pipelines/tokenizers/tok_util.h"

typedef struct kn_charsmap kn_charsmap;

int kn_charsmap_load(kn_charsmap **out, const uint8_t *blob, size_t len, kn_err *err);
/* The same from base64 text (tokenizer.json's precompiled_charsmap). */
int kn_charsmap_load_base64(kn_charsmap **out, const char *b64, size_t len, kn_err *err);
void kn_charsmap_free(kn_charsmap *m);

int kn_charsmap_normalize(const kn_charsmap *m, const uint8_t *text, size_t len, kn_tok_bytes *out, kn_err *err);

#endif
