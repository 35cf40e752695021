/* kn_tok: what the tokenizers (bpe.c, clip_bpe.c, spm.c) share, internal to
 * pipelines/tokenizers: whole-file and JSON reads, the hash their lookup tables use,
 * growable id and byte arrays, and added tokens (special tokens cut out of the text before
 * anything else sees it).
 *
 * Contract: functions that can fail return a kn status with err set; nothing here
 * keeps global state. A kn_added_tokens is built with kn_added_push, sealed with
 * kn_added_seal, then read-only (kn_added_match may run from many threads). */
#ifndef KN_TOK_UTIL_H
#define KN_TOK_UTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"

/* Reads a whole file into a malloc'ed, NUL-terminated buffer. */
int kn_tok_read_file(const char *path, char **data, size_t *len, kn_err *err);
/* Loads a JSON file whose top level must be an object (duplicate keys refused). */
int kn_tok_load_json(const char *path, json_t **out, kn_err *err);

/* splitmix64's finalizer: every input bit reaches the low bits the tables use. */
static inline uint64_t kn_tok_mix(uint64_t h) {
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9u;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebu;
    return h ^ (h >> 31);
}

/* FNV-1a (tokens are short), built up a byte at a time so that a caller can hash
 * every prefix of a string in one pass; kn_tok_mix the state before use. */
#define KN_TOK_HASH_INIT 0xcbf29ce484222325u
static inline uint64_t kn_tok_hash_byte(uint64_t h, uint8_t c) { return (h ^ c) * 0x100000001b3u; }

static inline uint64_t kn_tok_hash(const char *s, size_t len) {
    uint64_t h = KN_TOK_HASH_INIT;
    for (size_t i = 0; i < len; i++) h = kn_tok_hash_byte(h, (uint8_t)s[i]);
    return kn_tok_mix(h);
}

/* A power-of-two table size keeping the load factor at or below one half. */
static inline size_t kn_tok_table_size(size_t count) {
    size_t cap = 16;
    while (cap < 2 * count) cap *= 2;
    return cap;
}

/* A growable id array; v is malloc'ed (NULL while empty). */
typedef struct {
    int32_t *v;
    size_t n, cap;
} kn_tok_ids;

int kn_tok_ids_push(kn_tok_ids *ids, int32_t id, kn_err *err);

/* A growable byte string; v is malloc'ed (NULL while empty). */
typedef struct {
    uint8_t *v;
    size_t n, cap;
} kn_tok_bytes;

int kn_tok_bytes_add(kn_tok_bytes *b, const void *data, size_t n, kn_err *err);

/* Scratch memory: p when it holds n elements already, else p freed and a new block
 * of n (at least 1) elements of elem bytes (old contents are not kept). NULL with
 * err set when out of memory (p freed, *cap 0). */
void *kn_tok_reserve(void *p, size_t *cap, size_t n, size_t elem, kn_err *err);

typedef struct {
    char *text;
    size_t len;
    int32_t id;
} kn_added_token;

typedef struct {
    kn_added_token *v; /* longest first once sealed, so the first match is the longest */
    size_t n, cap;
    bool first_byte[256];
} kn_added_tokens;

/* Adds a copy of text[0..len) (len > 0) with its id. */
int kn_added_push(kn_added_tokens *a, const char *text, size_t len, int32_t id, kn_err *err);
void kn_added_seal(kn_added_tokens *a);
void kn_added_free(kn_added_tokens *a);
/* The longest added token at the start of s[0..len), or NULL. */
const kn_added_token *kn_added_match(const kn_added_tokens *a, const uint8_t *s, size_t len);
/* The added token spelled text[0..len) exactly, or NULL. */
const kn_added_token *kn_added_find(const kn_added_tokens *a, const char *text, size_t len);

/* Checks the flags of an added-token JSON object (tokenizer.json "added_tokens" or a
 * tokenizer_config.json entry): lstrip, rstrip and single_word are not implemented
 * and refused when true, rather than matched the wrong way; "normalized", where
 * present, must be what the caller implements (matching in normalized or raw text). */
int kn_added_check_flags(const json_t *tok, bool normalized, const char *path, const char *what, kn_err *err);

#endif
