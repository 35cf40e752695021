#include "pipelines/tokenizers/bpe.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/tokenizers/bpe_internal.h"
#include "pipelines/tokenizers/unicode.h"

/* Longest input encode accepts: keeps every byte position in 32 bits with room for
 * NFC's growth (4 code points of up to 4 bytes each per input byte). */
#define KN_BPE_MAX_INPUT ((size_t)1 << 27)

/* Longest vocabulary token accepted (Qwen's longest is 128 bytes), so that a key can
 * be decoded on the stack. */
#define KN_BPE_MAX_TOKEN 1024

/* Byte-level alphabet: printable bytes stand for themselves, the other 68 map to
 * U+0100.. in byte order, so every vocab key is printable text. */
#define ALPHABET_END 0x144

typedef struct {
    uint64_t key; /* left id << 32 | right id */
    uint32_t rank;
    int32_t merged;
} merge_slot;

#define MERGE_EMPTY UINT32_MAX

typedef struct {
    uint32_t off; /* into kn_bpe.bytes */
    int32_t len;
} token;

/* The hash's high half rides along so that probing past other keys does not touch
 * their bytes: loading does ~600k lookups, and cache misses were most of its time. */
typedef struct {
    int32_t id; /* -1: empty */
    uint32_t tag;
} vocab_slot;

struct kn_bpe {
    size_t n_ids;        /* one past the largest id */
    char *bytes;         /* raw bytes of every token, back to back */
    token *tok;          /* per id; len -1 for an unused id */
    vocab_slot *vocab;   /* open addressing over vocab.json tokens */
    size_t vocab_mask;
    merge_slot *merges;  /* open addressing over merge pairs */
    size_t merge_mask;
    int32_t byte_id[256];
    int32_t eow_id[256];  /* byte + "</w>" (CLIP's end-of-word symbols), -1 when absent */
    bool has_eow;         /* all 256 are present */
    int16_t alphabet_byte[ALPHABET_END]; /* code point -> byte, -1 outside the alphabet */
    kn_added_tokens added; /* tokenizer_config.json's added_tokens_decoder */
};

/* ---- hashing ------------------------------------------------------------------- */

/* The slot holding key s, or the empty slot where it would go. */
static vocab_slot *vocab_probe(const kn_bpe *b, const char *s, size_t len) {
    uint64_t h = kn_tok_hash(s, len);
    for (size_t i = h & b->vocab_mask;; i = (i + 1) & b->vocab_mask) {
        vocab_slot *v = &b->vocab[i];
        if (v->id < 0) return v;
        const token *t = &b->tok[v->id];
        if (v->tag == (uint32_t)(h >> 32) && (size_t)t->len == len && memcmp(b->bytes + t->off, s, len) == 0)
            return v;
    }
}

static int32_t vocab_find(const kn_bpe *b, const char *s, size_t len) { return vocab_probe(b, s, len)->id; }

/* True when id is the token spelled s[0..len). */
static bool token_is(const kn_bpe *b, int32_t id, const char *s, size_t len) {
    return id >= 0 && (size_t)id < b->n_ids && (size_t)b->tok[id].len == len &&
           !memcmp(b->bytes + b->tok[id].off, s, len);
}

static const merge_slot *merge_find(const kn_bpe *b, int32_t left, int32_t right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = kn_tok_mix(key) & b->merge_mask;; i = (i + 1) & b->merge_mask) {
        const merge_slot *m = &b->merges[i];
        if (m->rank == MERGE_EMPTY) return NULL;
        if (m->key == key) return m;
    }
}

/* ---- loading ------------------------------------------------------------------- */

static void build_alphabet(kn_bpe *b) {
    memset(b->alphabet_byte, -1, sizeof b->alphabet_byte);
    unsigned next = 0x100;
    for (unsigned c = 0; c < 256; c++) {
        bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
        b->alphabet_byte[printable ? c : next++] = (int16_t)c;
    }
}

/* Decodes a byte-level key (UTF-8 of alphabet code points) into raw bytes; out has
 * room for max bytes. Returns the raw length, or -1 when a character is outside
 * the alphabet, the UTF-8 is ill-formed or the result would pass max. */
static long alphabet_decode(const kn_bpe *b, const char *key, size_t len, char *out, size_t max) {
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = kn_utf8_decode((const uint8_t *)key + i, len - i, &cp);
        if (!k || cp >= ALPHABET_END || b->alphabet_byte[cp] < 0 || n == max) return -1;
        out[n++] = (char)b->alphabet_byte[cp];
        i += k;
    }
    return (long)n;
}

/* Reads the added tokens of tokenizer_config.json, matched on raw text. */
static int parse_added(kn_bpe *b, const json_t *config, const char *path, kn_err *err) {
    const json_t *dec = json_object_get(config, "added_tokens_decoder");
    if (!dec) return KN_OK;
    if (!json_is_object(dec)) return kn_fail(err, KN_ERR_FORMAT, "%s: added_tokens_decoder is not an object", path);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)dec, key, v) {
        char *end;
        long id = strtol(key, &end, 10);
        const json_t *content = json_object_get(v, "content");
        if (*key == '\0' || *end != '\0' || id < 0 || id >= INT32_MAX || !json_is_string(content) ||
            json_string_length(content) == 0)
            return kn_fail(err, KN_ERR_FORMAT, "%s: added token '%s': needs an integer id and non-empty content",
                           path, key);
        if (kn_added_check_flags(v, false, path, key, err) ||
            kn_added_push(&b->added, json_string_value(content), json_string_length(content), (int32_t)id, err))
            return err->code;
    }
    kn_added_seal(&b->added);
    return KN_OK;
}

/* vocab.json is read by hand: a general JSON library took ~400 ms on its 151k keys,
 * and the file is one flat object of "key": id pairs. */
typedef struct {
    char *p, *end, *start;
    const char *path;
} jcursor;

static int json_error(const jcursor *c, const char *what, kn_err *err) {
    size_t line = 1;
    for (const char *q = c->start; q < c->p && q < c->end; q++) line += *q == '\n';
    return kn_fail(err, KN_ERR_FORMAT, "%s:%zu: %s", c->path, line, what);
}

static void skip_ws(jcursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static int hex4(const char *p, const char *end, uint32_t *v) {
    *v = 0;
    if (end - p < 4) return -1;
    for (int i = 0; i < 4; i++) {
        char h = p[i];
        int d = h >= '0' && h <= '9' ? h - '0' : (h | 0x20) >= 'a' && (h | 0x20) <= 'f' ? (h | 0x20) - 'a' + 10 : -1;
        if (d < 0) return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* Decodes the JSON string at c->p (at its opening quote) in place, into UTF-8 at
 * *out (decoded text is never longer than its escaped form). */
static int read_key(jcursor *c, char **out, size_t *len, kn_err *err) {
    if (c->p >= c->end || *c->p != '"') return json_error(c, "expected a string", err);
    char *w = *out = ++c->p;
    while (c->p < c->end && *c->p != '"') {
        char ch = *c->p++;
        if ((uint8_t)ch < 0x20) return json_error(c, "control character in a string", err);
        if (ch != '\\') {
            *w++ = ch;
            continue;
        }
        if (c->p >= c->end) break;
        uint32_t cp, lo;
        switch (ch = *c->p++) {
        case '"': case '\\': case '/': *w++ = ch; continue;
        case 'b': *w++ = '\b'; continue;
        case 'f': *w++ = '\f'; continue;
        case 'n': *w++ = '\n'; continue;
        case 'r': *w++ = '\r'; continue;
        case 't': *w++ = '\t'; continue;
        case 'u': break;
        default: return json_error(c, "bad escape in a string", err);
        }
        if (hex4(c->p, c->end, &cp)) return json_error(c, "bad \\u escape in a string", err);
        c->p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u' || hex4(c->p + 2, c->end, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return json_error(c, "unpaired surrogate escape", err);
            c->p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return json_error(c, "unpaired surrogate escape", err);
        }
        w += kn_utf8_encode(cp, (uint8_t *)w);
    }
    if (c->p >= c->end) return json_error(c, "unterminated string", err);
    c->p++;
    *len = (size_t)(w - *out);
    return KN_OK;
}

static int read_id(jcursor *c, int32_t *id, kn_err *err) {
    int64_t v = 0;
    const char *digits = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9' && v < INT32_MAX) v = v * 10 + (*c->p++ - '0');
    if (c->p == digits || v >= INT32_MAX || (c->p < c->end && (*c->p == '.' || (*c->p | 0x20) == 'e' ||
                                                               (*c->p >= '0' && *c->p <= '9'))))
        return json_error(c, "id is not an integer in [0, 2^31-1)", err);
    *id = (int32_t)v;
    return KN_OK;
}

typedef struct {
    uint32_t off;
    int32_t len, id;
} vocab_entry;

/* Parses vocab.json's keys (decoded from the byte-level alphabet into b->bytes,
 * sized by the caller) and ids into *ents. */
static int parse_vocab(kn_bpe *b, jcursor *c, vocab_entry **ents, size_t *n, size_t *used, kn_err *err) {
    size_t cap = 0;
    skip_ws(c);
    if (c->p >= c->end || *c->p++ != '{') return json_error(c, "expected '{'", err);
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') return json_error(c, "empty vocabulary", err);
    for (;;) {
        char *key = NULL;
        size_t key_len = 0;
        int32_t id = 0;
        skip_ws(c);
        if (read_key(c, &key, &key_len, err)) return err->code;
        skip_ws(c);
        if (c->p >= c->end || *c->p++ != ':') return json_error(c, "expected ':'", err);
        skip_ws(c);
        if (read_id(c, &id, err)) return err->code;
        long len = alphabet_decode(b, key, key_len, b->bytes + *used, KN_BPE_MAX_TOKEN);
        if (len <= 0) return json_error(c, "key empty, outside the byte-level alphabet or over 1024 bytes", err);
        if (*n == cap) {
            size_t bytes;
            vocab_entry *p;
            cap = cap ? 2 * cap : 1024;
            if (kn_mul_size(cap, sizeof *p, &bytes) || !(p = realloc(*ents, bytes)))
                return kn_fail(err, KN_ERR_NOMEM, "%s: %zu entries", c->path, cap);
            *ents = p;
        }
        (*ents)[(*n)++] = (vocab_entry){(uint32_t)*used, (int32_t)len, id};
        *used += (size_t)len;
        skip_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p < c->end && *c->p == '}') break;
        return json_error(c, "expected ',' or '}'", err);
    }
    c->p++;
    skip_ws(c);
    return c->p == c->end ? KN_OK : json_error(c, "text after the object", err);
}

/* Fills the id tables from vocab.json, leaving the added tokens' ids unused (and
 * room for their text in b->bytes, filled from *used on). */
static int load_vocab(kn_bpe *b, const char *path, size_t *used, kn_err *err) {
    char *data;
    size_t len, n = 0, max_id = 0, total = 0;
    vocab_entry *ents = NULL;
    if (kn_tok_read_file(path, &data, &len, err)) return err->code;
    for (size_t i = 0; i < b->added.n; i++) total += b->added.v[i].len;
    int rc = KN_OK;
    /* raw key bytes never outnumber the file's bytes */
    if (kn_add_size(total, len, &total) || total > UINT32_MAX)
        rc = kn_fail(err, KN_ERR_FORMAT, "%s: %zu bytes is too large", path, len);
    else if (!(b->bytes = malloc(total ? total : 1)))
        rc = kn_fail(err, KN_ERR_NOMEM, "%s: %zu bytes of tokens", path, total);
    jcursor c = {data, data + len, data, path};
    if (!rc) rc = parse_vocab(b, &c, &ents, &n, used, err);
    for (size_t i = 0; !rc && i < n; i++)
        if ((size_t)ents[i].id > max_id) max_id = (size_t)ents[i].id;
    for (size_t i = 0; !rc && i < b->added.n; i++)
        if ((size_t)b->added.v[i].id > max_id) max_id = (size_t)b->added.v[i].id;
    if (!rc) {
        b->n_ids = max_id + 1;
        b->vocab_mask = kn_tok_table_size(n) - 1;
        b->tok = malloc(b->n_ids * sizeof *b->tok);
        b->vocab = malloc((b->vocab_mask + 1) * sizeof *b->vocab);
        if (!b->tok || !b->vocab)
            rc = kn_fail(err, KN_ERR_NOMEM, "%s: tables for %zu ids", path, b->n_ids);
    }
    if (!rc) {
        for (size_t i = 0; i < b->n_ids; i++) b->tok[i] = (token){0, -1};
        for (size_t i = 0; i <= b->vocab_mask; i++) b->vocab[i] = (vocab_slot){-1, 0};
    }
    for (size_t k = 0; !rc && k < n; k++) {
        const vocab_entry *e = &ents[k];
        const char *bytes = b->bytes + e->off;
        vocab_slot *v = vocab_probe(b, bytes, (size_t)e->len);
        if (b->tok[e->id].len >= 0) {
            rc = kn_fail(err, KN_ERR_FORMAT, "%s: id %d is used twice", path, e->id);
        } else if (v->id >= 0) {
            rc = kn_fail(err, KN_ERR_FORMAT, "%s: key of id %d appears twice", path, e->id);
        } else {
            b->tok[e->id] = (token){e->off, e->len};
            *v = (vocab_slot){e->id, (uint32_t)(kn_tok_hash(bytes, (size_t)e->len) >> 32)};
        }
    }
    for (int ch = 0; !rc && ch < 256; ch++) {
        char byte = (char)ch;
        b->byte_id[ch] = vocab_find(b, &byte, 1);
        if (b->byte_id[ch] < 0) rc = kn_fail(err, KN_ERR_FORMAT, "%s: no token for byte 0x%02X", path, ch);
    }
    b->has_eow = true;
    for (int ch = 0; !rc && ch < 256; ch++) {
        char key[5] = {(char)ch, '<', '/', 'w', '>'};
        b->eow_id[ch] = vocab_find(b, key, sizeof key);
        b->has_eow = b->has_eow && b->eow_id[ch] >= 0;
    }
    free(ents);
    free(data);
    return rc;
}

/* merges.txt: "LEFT RIGHT" per line, rank = 0-based line index after the
 * "#version" header. Like the reference's hash map, a repeated pair keeps the rank
 * of its last line. */
static int load_merges(kn_bpe *b, const char *path, kn_err *err) {
    char *data, scratch[2 * KN_BPE_MAX_TOKEN];
    size_t len;
    if (kn_tok_read_file(path, &data, &len, err)) return err->code;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    if (lines >= INT32_MAX - 256) {
        free(data);
        return kn_fail(err, KN_ERR_FORMAT, "%s: %zu lines is too many merges", path, lines);
    }
    b->merge_mask = kn_tok_table_size(lines + 1) - 1;
    b->merges = malloc((b->merge_mask + 1) * sizeof *b->merges);
    if (!b->merges) {
        free(data);
        return kn_fail(err, KN_ERR_NOMEM, "%s: merge table for %zu lines", path, lines);
    }
    for (size_t i = 0; i <= b->merge_mask; i++) b->merges[i].rank = MERGE_EMPTY;

    int rc = KN_OK;
    uint32_t rank = 0;
    size_t line_no = 0;
    for (char *line = data; line < data + len;) {
        char *eol = memchr(line, '\n', (size_t)(data + len - line));
        char *next = eol ? eol + 1 : data + len;
        if (!eol) eol = data + len;
        if (eol > line && eol[-1] == '\r') eol--;
        line_no++;
        if (line_no == 1 && eol - line >= 8 && memcmp(line, "#version", 8) == 0) {
            line = next;
            continue;
        }
        char *sp = memchr(line, ' ', (size_t)(eol - line));
        long ll = -1, rl = -1;
        if (sp && !memchr(sp + 1, ' ', (size_t)(eol - sp - 1))) {
            ll = alphabet_decode(b, line, (size_t)(sp - line), scratch, KN_BPE_MAX_TOKEN);
            if (ll > 0) rl = alphabet_decode(b, sp + 1, (size_t)(eol - sp - 1), scratch + ll, KN_BPE_MAX_TOKEN);
        }
        if (ll <= 0 || rl <= 0) {
            rc = kn_fail(err, KN_ERR_FORMAT, "%s:%zu: not two byte-level tokens separated by one space", path, line_no);
            break;
        }
        int32_t left = vocab_find(b, scratch, (size_t)ll), right = vocab_find(b, scratch + ll, (size_t)rl);
        /* Vocabularies built by BPE training give merge r the id 256 + r: checking
         * that walks the tables in order instead of one more random lookup. */
        int32_t merged = (int32_t)(256 + rank);
        if (!token_is(b, merged, scratch, (size_t)(ll + rl))) merged = vocab_find(b, scratch, (size_t)(ll + rl));
        if (left < 0 || right < 0 || merged < 0) {
            rc = kn_fail(err, KN_ERR_FORMAT, "%s:%zu: '%.*s' is not in the vocabulary", path, line_no,
                         (int)(eol - line), line);
            break;
        }
        uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
        size_t i = kn_tok_mix(key) & b->merge_mask;
        while (b->merges[i].rank != MERGE_EMPTY && b->merges[i].key != key) i = (i + 1) & b->merge_mask;
        b->merges[i] = (merge_slot){key, rank++, merged};
        line = next;
    }
    free(data);
    return rc;
}

/* Gives the added tokens their ids in the token table; after the merges, so that no
 * merge can resolve to one (the reference looks merges up in vocab.json only). */
static int place_added(kn_bpe *b, size_t used, const char *path, kn_err *err) {
    for (size_t k = 0; k < b->added.n; k++) {
        const kn_added_token *t = &b->added.v[k];
        if (b->tok[t->id].len >= 0)
            return kn_fail(err, KN_ERR_FORMAT, "%s: added token '%.*s': id %d is taken", path, (int)t->len, t->text,
                           t->id);
        memcpy(b->bytes + used, t->text, t->len);
        b->tok[t->id] = (token){(uint32_t)used, (int32_t)t->len};
        used += t->len;
    }
    return KN_OK;
}

static int load_all(kn_bpe *b, const char *dir, kn_err *err) {
    char config_path[4096], path[4096];
    json_t *config = NULL;
    size_t used = 0;
    build_alphabet(b);
    snprintf(config_path, sizeof config_path, "%s/tokenizer_config.json", dir);
    int rc = kn_tok_load_json(config_path, &config, err);
    if (!rc) rc = parse_added(b, config, config_path, err);
    json_decref(config);
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (!rc) rc = load_vocab(b, path, &used, err);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (!rc) rc = load_merges(b, path, err);
    if (!rc) rc = place_added(b, used, config_path, err);
    return rc;
}

int kn_bpe_load_files(kn_bpe **out, const char *dir, kn_err *err) {
    *out = NULL;
    kn_bpe *b = calloc(1, sizeof *b);
    if (!b) return kn_fail(err, KN_ERR_NOMEM, "kn_bpe_load");
    if (load_all(b, dir, err)) {
        kn_bpe_free(b);
        return err->code;
    }
    *out = b;
    return KN_OK;
}

int kn_bpe_load(kn_bpe **out, const char *dir, kn_err *err) {
    return kn_bpe_load_files(out, dir, err) ? kn_err_wrap(err, "qwen2 tokenizer %s", dir) : KN_OK;
}

bool kn_bpe_has_end_of_word(const kn_bpe *b) { return b->has_eow; }

void kn_bpe_free(kn_bpe *b) {
    if (!b) return;
    kn_added_free(&b->added);
    free(b->bytes);
    free(b->tok);
    free(b->vocab);
    free(b->merges);
    free(b);
}

size_t kn_bpe_vocab_size(const kn_bpe *b) { return b->n_ids; }

const char *kn_bpe_token_bytes(const kn_bpe *b, int32_t id, size_t *len) {
    if (id < 0 || (size_t)id >= b->n_ids || b->tok[id].len < 0) return NULL;
    *len = (size_t)b->tok[id].len;
    return b->bytes + b->tok[id].off;
}

int32_t kn_bpe_token_id(const kn_bpe *b, const char *key, size_t len) {
    const kn_added_token *t = kn_added_find(&b->added, key, len);
    if (t) return t->id;
    char raw[KN_BPE_MAX_TOKEN];
    long n = alphabet_decode(b, key, len, raw, sizeof raw);
    return n > 0 ? vocab_find(b, raw, (size_t)n) : -1;
}

/* ---- encoding ------------------------------------------------------------------ */

/* Room for BPE over n symbols: the heap (n-1 initial pairs + 2 per merge) and three
 * int32 arrays, carved from one block. */
static int reserve_symbols(kn_bpe_work *w, size_t n, kn_err *err) {
    if (n <= w->cap_sym && w->block) return KN_OK;
    size_t cap = n < 256 ? 256 : n, per = 3 * sizeof *w->heap + 3 * sizeof *w->sym;
    if (!(w->block = kn_tok_reserve(w->block, &w->cap_sym, cap, per, err))) return err->code;
    w->heap = w->block;
    w->sym = (int32_t *)(w->heap + 3 * cap);
    w->prev = w->sym + cap;
    w->next = w->prev + cap;
    return KN_OK;
}

void kn_bpe_work_free(kn_bpe_work *w) {
    free(w->block);
    *w = (kn_bpe_work){0};
}

/* Min-heap of (rank << 32 | position): lowest rank first, then leftmost. */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

static void push_pair(const kn_bpe *b, kn_bpe_work *w, size_t *nh, int32_t left) {
    int32_t right = w->next[left];
    if (right < 0) return;
    const merge_slot *m = merge_find(b, w->sym[left], w->sym[right]);
    if (m) heap_push(w->heap, nh, (uint64_t)m->rank << 32 | (uint32_t)left);
}

/* Start from one symbol per byte and apply the lowest-ranked merge (leftmost on
 * ties) until none applies. Heap entries go stale when a neighbour merges; they are
 * recognised by re-looking up the pair's rank (ranks are unique per pair, and merged
 * tokens only grow, so an equal rank means the same, still current pair). */
int kn_bpe_merge(const kn_bpe *b, kn_bpe_work *w, const uint8_t *bytes, size_t n, bool end_of_word, kn_tok_ids *out,
                 kn_err *err) {
    if (n > INT32_MAX) return kn_fail(err, KN_ERR_INVALID, "pre-token of %zu bytes", n);
    if (reserve_symbols(w, n, err)) return err->code;
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = b->byte_id[bytes[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    if (end_of_word) w->sym[n - 1] = b->eow_id[bytes[n - 1]];
    size_t nh = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(b, w, &nh, (int32_t)i);
    while (nh) {
        uint64_t top = heap_pop(w->heap, &nh);
        int32_t left = (int32_t)(uint32_t)top, right = w->next[left];
        if (w->sym[left] < 0 || right < 0) continue;
        const merge_slot *m = merge_find(b, w->sym[left], w->sym[right]);
        if (!m || m->rank != top >> 32) continue;
        w->sym[left] = m->merged;
        w->sym[right] = -1;
        w->next[left] = w->next[right];
        if (w->next[right] >= 0) w->prev[w->next[right]] = left;
        if (w->prev[left] >= 0) push_pair(b, w, &nh, w->prev[left]);
        push_pair(b, w, &nh, left);
    }
    for (int32_t i = 0; i >= 0; i = w->next[i])
        if (kn_tok_ids_push(out, w->sym[i], err)) return err->code;
    return KN_OK;
}

/* Code-point classes of the Qwen2 split regex. */
enum { C_OTHER, C_LETTER, C_NUMBER, C_SPACE, C_NEWLINE /* CR or LF, also \s */ };

static uint8_t classify(uint32_t cp) {
    if (cp == '\r' || cp == '\n') return C_NEWLINE;
    if (kn_uc_is_white_space(cp)) return C_SPACE;
    if (kn_uc_is_letter(cp)) return C_LETTER;
    if (kn_uc_is_number(cp)) return C_NUMBER;
    return C_OTHER;
}

/* Contraction letters under Oniguruma's (?i): ASCII either case, and U+017F LONG S,
 * whose case folding is 's'. */
static uint32_t fold(uint32_t cp) { return cp == 0x17F ? 's' : cp < 0x80 ? cp | 0x20 : cp; }

/* End of the regex match starting at i (i < n); the alternatives are tried in order
 * and the first that matches wins, as in the backtracking engine. */
static size_t pretoken_end(const uint32_t *cp, const uint8_t *cls, size_t i, size_t n) {
    /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
    if (cp[i] == '\'' && i + 1 < n) {
        uint32_t a = fold(cp[i + 1]), z = i + 2 < n ? fold(cp[i + 2]) : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && z == 'e') || (a == 'v' && z == 'e') || (a == 'l' && z == 'l')) return i + 3;
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    size_t j = i;
    if ((cls[j] == C_OTHER || cls[j] == C_SPACE) && j + 1 < n && cls[j + 1] == C_LETTER) j++;
    if (cls[j] == C_LETTER) {
        while (j < n && cls[j] == C_LETTER) j++;
        return j;
    }
    /* \p{N} */
    if (cls[i] == C_NUMBER) return i + 1;
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    j = i;
    if (cp[j] == ' ' && j + 1 < n && cls[j + 1] == C_OTHER) j++;
    if (cls[j] == C_OTHER) {
        while (j < n && cls[j] == C_OTHER) j++;
        while (j < n && cls[j] == C_NEWLINE) j++;
        return j;
    }
    /* Only whitespace is left. \s*[\r\n]+ ends after the run's last CR/LF. */
    size_t end = i, after_newline = 0;
    for (; end < n && (cls[end] == C_SPACE || cls[end] == C_NEWLINE); end++)
        if (cls[end] == C_NEWLINE) after_newline = end + 1;
    if (after_newline) return after_newline;
    /* \s+(?!\S): the whole run at the end of text, else all but its last char;
     * \s+ takes a single space left before a non-space. */
    if (end == n || end - i == 1) return end;
    return end - 1;
}

/* Per-call working memory of the Qwen2 path, grown on demand and freed at the end
 * of the call. */
typedef struct {
    kn_tok_ids ids;
    uint32_t *cps, *nfc; /* a piece's code points, and their NFC when it differs */
    uint8_t *cls;        /* a class per (normalized) code point */
    uint8_t *text;       /* one pre-token's UTF-8 */
    size_t cap_cps, cap_nfc, cap_cls, cap_text;
    kn_bpe_work work;
} scratch;

static void scratch_free(scratch *s) {
    free(s->cps);
    free(s->nfc);
    free(s->cls);
    free(s->text);
    kn_bpe_work_free(&s->work);
}

/* Normalizes and tokenizes text between added tokens. */
static int encode_piece(const kn_bpe *b, scratch *s, const uint8_t *text, size_t len, kn_err *err) {
    size_t n = 0;
    if (!(s->cps = kn_tok_reserve(s->cps, &s->cap_cps, len, sizeof *s->cps, err))) return err->code;
    for (size_t i = 0; i < len; n++) i += kn_utf8_decode(text + i, len - i, &s->cps[n]);
    const uint32_t *cp = s->cps;
    if (!kn_uc_nfc_quick(cp, n)) {
        if (!(s->nfc = kn_tok_reserve(s->nfc, &s->cap_nfc, n * KN_UC_NFC_MAX_GROWTH, sizeof *s->nfc, err)))
            return err->code;
        n = kn_uc_nfc(cp, n, s->nfc);
        cp = s->nfc;
    }
    if (!(s->cls = kn_tok_reserve(s->cls, &s->cap_cls, n, 1, err))) return err->code;
    for (size_t i = 0; i < n; i++) s->cls[i] = classify(cp[i]);
    for (size_t i = 0; i < n;) {
        size_t end = pretoken_end(cp, s->cls, i, n), bytes = 0;
        if (!(s->text = kn_tok_reserve(s->text, &s->cap_text, 4 * (end - i), 1, err))) return err->code;
        for (; i < end; i++) bytes += kn_utf8_encode(cp[i], s->text + bytes);
        if (kn_bpe_merge(b, &s->work, s->text, bytes, false, &s->ids, err)) return err->code;
    }
    return KN_OK;
}

static int encode_all(const kn_bpe *b, scratch *s, const uint8_t *text, size_t len, kn_err *err) {
    if (len > KN_BPE_MAX_INPUT)
        return kn_fail(err, KN_ERR_INVALID, "text of %zu bytes is over the %zu limit", len, KN_BPE_MAX_INPUT);
    size_t bad = kn_utf8_validate(text, len);
    if (bad < len) return kn_fail(err, KN_ERR_INVALID, "text is not valid UTF-8 at byte %zu", bad);
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        const kn_added_token *t = kn_added_match(&b->added, text + i, len - i);
        if (!t) {
            i++;
            continue;
        }
        if (encode_piece(b, s, text + start, i - start, err) || kn_tok_ids_push(&s->ids, t->id, err))
            return err->code;
        i += t->len;
        start = i;
    }
    return encode_piece(b, s, text + start, len - start, err);
}

int kn_bpe_encode(const kn_bpe *b, const char *utf8, size_t len, int32_t **ids, size_t *n, kn_err *err) {
    *ids = NULL;
    *n = 0;
    scratch s = {0};
    int rc = encode_all(b, &s, (const uint8_t *)utf8, len, err);
    scratch_free(&s);
    if (rc) {
        free(s.ids.v);
        return kn_err_wrap(err, "qwen2 tokenizer");
    }
    *ids = s.ids.v;
    *n = s.ids.n;
    return KN_OK;
}
