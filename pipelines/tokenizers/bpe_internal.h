/* The byte-level BPE engine of bpe.c, shared with clip_bpe.c (CLIP-L runs the same
 * vocab.json + merges.txt machinery with its own normalizer and pre-tokenizer).
 * Internal to pipelines/tokenizers. */
#ifndef KN_BPE_INTERNAL_H
#define KN_BPE_INTERNAL_H

#include <stdbool.h>

#include "pipelines/tokenizers/bpe.h"
#include "pipelines/tokenizers/tok_util.h"

/* Working memory for BPE over one pre-token at a time, grown on demand; zero it
 * before first use, release with kn_bpe_work_free. */
typedef struct {
    void *block;
    size_t cap_sym;
    uint64_t *heap;
    int32_t *sym, *prev, *next;
} kn_bpe_work;

void kn_bpe_work_free(kn_bpe_work *w);

/* Loads DIR/vocab.json, DIR/merges.txt and the added_tokens_decoder of
 * DIR/tokenizer_config.json, as kn_bpe_load does, with errors not yet wrapped. */
int kn_bpe_load_files(kn_bpe **out, const char *dir, kn_err *err);

/* True when every byte also has an end-of-word token (byte + "</w>"). */
bool kn_bpe_has_end_of_word(const kn_bpe *b);

/* Appends to out the ids of one pre-token's bytes[0..n) (n > 0). With end_of_word,
 * its last byte starts as the end-of-word symbol, as CLIP's BPE appends "</w>" to
 * the last symbol of each word (needs kn_bpe_has_end_of_word). */
int kn_bpe_merge(const kn_bpe *b, kn_bpe_work *w, const uint8_t *bytes, size_t n, bool end_of_word, kn_tok_ids *out,
                 kn_err *err);

#endif
