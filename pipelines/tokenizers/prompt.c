#include "pipelines/tokenizers/prompt.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pipelines/tokenizers/unicode.h"

/* ComfyUI's SDTokenizer.max_word_length: groups this long may be split across chunks. */
#define LARGE_GROUP 8

static const char EMBEDDING[] = "embedding:";
#define EMBEDDING_LEN (sizeof EMBEDDING - 1)

/* ---- growable arrays ----------------------------------------------------------- */

/* Returns p grown to hold need elements (capacity doubling), or NULL with err set
 * and p left as it was. */
static void *grow(void *p, size_t *cap, size_t need, size_t elem, kn_err *err) {
    if (need <= *cap) return p;
    size_t cap2 = *cap ? *cap : 16, bytes;
    while (cap2 < need) {
        if (kn_mul_size(cap2, 2, &cap2)) {
            kn_fail(err, KN_ERR_NOMEM, "prompt: %zu elements", need);
            return NULL;
        }
    }
    void *q = NULL;
    if (kn_mul_size(cap2, elem, &bytes) || !(q = realloc(p, bytes))) {
        kn_fail(err, KN_ERR_NOMEM, "prompt: %zu elements of %zu bytes", cap2, elem);
        return NULL;
    }
    *cap = cap2;
    return q;
}

/* v->field grown to hold need elements, or return err->code from the caller. */
#define GROW(v, field, cap, need, err)                                          \
    do {                                                                        \
        void *grown_ = grow((v)->field, &(v)->cap, need, sizeof *(v)->field, err); \
        if (!grown_) return (err)->code;                                        \
        (v)->field = grown_;                                                    \
    } while (0)

typedef struct {
    char *p;
    size_t len, cap;
} strbuf;

static int sb_add(strbuf *b, const char *s, size_t n, kn_err *err) {
    size_t need;
    if (kn_add_size(b->len, n + 1, &need)) return kn_fail(err, KN_ERR_NOMEM, "prompt: string of %zu bytes", n);
    GROW(b, p, cap, need, err);
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return KN_OK;
}

typedef struct {
    kn_prompt_token *t;
    size_t n, cap;
} tokvec;

static int tv_add(tokvec *v, kn_prompt_token t, kn_err *err) {
    GROW(v, t, cap, v->n + 1, err);
    v->t[v->n++] = t;
    return KN_OK;
}

/* ---- escapes and weights ------------------------------------------------------- */

/* ComfyUI hides "\(" and "\)" from the paren parser as the two-byte codes
 * NUL+0x02 / NUL+0x01 and turns those codes back into bare parens afterwards, so a
 * prompt that already holds such codes gets parens too. */
static void escape(char *s, size_t len) {
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] == '\\' && (s[i + 1] == ')' || s[i + 1] == '(')) {
            s[i + 1] = s[i + 1] == ')' ? '\1' : '\2';
            s[i++] = '\0';
        }
    }
}

/* out = s[0..len) with the codes turned back into parens (it only shrinks). */
static int unescape(const char *s, size_t len, strbuf *out, kn_err *err) {
    out->len = 0;
    if (sb_add(out, s, len, err)) return err->code;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '\0' && i + 1 < len && (s[i + 1] == '\1' || s[i + 1] == '\2')) c = s[++i] == '\1' ? ')' : '(';
        out->p[n++] = c;
    }
    out->p[out->len = n] = '\0';
    return KN_OK;
}

static bool ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Python's float() on s already mapped to ASCII (buf[0..n)): surrounding
 * whitespace, sign, digits with single underscores between them, optional fraction
 * and exponent, or inf/infinity/nan. */
static bool py_float_ascii(char *buf, size_t n, double *out) {
    size_t a = 0, b = n, m = 0;
    while (a < b && ascii_space(buf[a])) a++;
    while (b > a && ascii_space(buf[b - 1])) b--;
    for (size_t i = a; i < b; i++)
        if (buf[i] == '_' && !(i > a && is_digit(buf[i - 1]) && i + 1 < b && is_digit(buf[i + 1]))) return false;
    for (size_t i = a; i < b; i++)
        if (buf[i] != '_') buf[m++] = buf[i];
    buf[m] = '\0';
    size_t i = buf[0] == '+' || buf[0] == '-';
    if (!strcasecmp(buf + i, "inf") || !strcasecmp(buf + i, "infinity") || !strcasecmp(buf + i, "nan")) {
        *out = strtod(buf, NULL);
        return true;
    }
    size_t digits = 0;
    for (; is_digit(buf[i]); i++) digits++;
    if (buf[i] == '.')
        for (i++; is_digit(buf[i]); i++) digits++;
    if (!digits) return false;
    if (buf[i] == 'e' || buf[i] == 'E') {
        i += buf[i + 1] == '+' || buf[i + 1] == '-' ? 2 : 1;
        if (!is_digit(buf[i])) return false;
        while (is_digit(buf[i])) i++;
    }
    if (i != m) return false;
    /* The syntax is checked, so strtod (correctly rounded in glibc; C locale, as Kiln
     * never calls setlocale) reads exactly what Python would. */
    *out = strtod(buf, NULL);
    return true;
}

/* Python's float(s) on UTF-8 text: Unicode whitespace counts as a space and any
 * Unicode decimal digit as its ASCII digit, as CPython maps them first. Returns
 * false where Python raises (or memory ran out: the weight then stays unparsed). */
static bool py_float(const char *s, size_t len, double *out) {
    char *buf = malloc(len + 1);
    size_t n = 0;
    bool ok = buf != NULL;
    for (size_t i = 0; ok && i < len;) {
        uint32_t cp;
        size_t k = kn_utf8_decode((const uint8_t *)s + i, len - i, &cp);
        int digit = k ? kn_uc_decimal_value(cp) : -1;
        ok = k && cp != 0 && (cp < 0x80 || kn_uc_is_py_space(cp) || digit >= 0); /* Python refuses NUL */
        if (ok) buf[n++] = cp < 0x80 ? (char)cp : digit >= 0 ? (char)('0' + digit) : ' ';
        i += k;
    }
    ok = ok && py_float_ascii(buf, n, out);
    free(buf);
    return ok;
}

typedef struct {
    size_t off, len;
    double weight;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spanvec;

static int parse_weights(const char *s, size_t off, size_t len, double weight, int depth, spanvec *out, kn_err *err);

/* One item of the paren split: a "(...)" group is re-parsed with weight * 1.1, or
 * with the number after its last ':' (not at index 0) when that parses as a float,
 * which also cuts it off; anything else is a plain segment. */
static int weigh_item(const char *s, size_t a, size_t n, double weight, int depth, spanvec *out, kn_err *err) {
    if (n >= 2 && s[a] == '(' && s[a + n - 1] == ')') {
        size_t in = a + 1, in_len = n - 2, colon = in_len;
        double w = weight * 1.1, parsed;
        while (colon > 0 && s[in + colon - 1] != ':') colon--;
        if (colon > 1 && py_float(s + in + colon, in_len - colon, &parsed)) {
            w = parsed;
            in_len = colon - 1;
        }
        return parse_weights(s, in, in_len, w, depth + 1, out, err);
    }
    GROW(out, v, cap, out->n + 1, err);
    out->v[out->n++] = (span){a, n, weight};
    return KN_OK;
}

/* ComfyUI's token_weights over s[off .. off+len) (escaped text). Items are cut by a
 * depth counter that may go negative (after a stray ')', parens are text until it
 * is back at 0): '(' at depth 0 starts an item, ')' back to depth 0 ends one. */
static int parse_weights(const char *s, size_t off, size_t len, double weight, int depth, spanvec *out, kn_err *err) {
    if (depth > KN_PROMPT_MAX_NESTING)
        return kn_fail(err, KN_ERR_INVALID, "prompt: parentheses nested deeper than %d", KN_PROMPT_MAX_NESTING);
    size_t item = off, end = off + len;
    long level = 0;
    for (size_t i = off; i < end; i++) {
        if (s[i] == '(') {
            if (level++ == 0 && i > item) {
                if (weigh_item(s, item, i - item, weight, depth, out, err)) return err->code;
                item = i;
            }
        } else if (s[i] == ')' && --level == 0) {
            if (weigh_item(s, item, i + 1 - item, weight, depth, out, err)) return err->code;
            item = i + 1;
        }
    }
    return end > item ? weigh_item(s, item, end - item, weight, depth, out, err) : KN_OK;
}

/* The prompt as escaped text plus its (span, weight) list: all of it at 1.0 when
 * weights are off, as ComfyUI's disable_weights does. */
static int segments(const char *text, size_t len, bool weights, strbuf *esc, spanvec *spans, kn_err *err) {
    if (sb_add(esc, text, len, err)) return err->code;
    escape(esc->p, len);
    if (weights) return parse_weights(esc->p, 0, len, 1.0, 0, spans, err);
    GROW(spans, v, cap, 1, err);
    spans->v[spans->n++] = (span){0, len, 1.0};
    return KN_OK;
}

void kn_prompt_segments_free(kn_prompt_segment *segs, size_t n) {
    for (size_t i = 0; segs && i < n; i++) free(segs[i].text);
    free(segs);
}

int kn_prompt_weights(const char *text, size_t len, kn_prompt_segment **segs, size_t *n, kn_err *err) {
    strbuf esc = {0}, seg = {0};
    spanvec spans = {0};
    *segs = NULL;
    *n = 0;
    int rc = segments(text, len, true, &esc, &spans, err);
    if (!rc && !(*segs = calloc(spans.n ? spans.n : 1, sizeof **segs)))
        rc = kn_fail(err, KN_ERR_NOMEM, "prompt: %zu segments", spans.n);
    for (size_t i = 0; !rc && i < spans.n; i++) {
        seg = (strbuf){0};
        rc = unescape(esc.p + spans.v[i].off, spans.v[i].len, &seg, err);
        (*segs)[i] = (kn_prompt_segment){seg.p, seg.len, spans.v[i].weight};
        *n = i + 1;
    }
    free(esc.p);
    free(spans.v);
    if (rc) {
        kn_prompt_segments_free(*segs, *n);
        *segs = NULL;
        *n = 0;
    }
    return rc;
}

/* ---- pieces -> token groups ---------------------------------------------------- */

typedef struct {
    const kn_prompt_tokenizer *tok;
    const kn_prompt_embeddings *emb;
    tokvec groups;    /* every group's tokens back to back, word = group number */
    int32_t n_groups;
    kn_err *err;
} builder;

/* Tokenizes one piece of text as one group (possibly empty, still numbered). */
static int add_text_group(builder *b, const char *s, size_t len, double weight) {
    const kn_prompt_tokenizer *t = b->tok;
    int32_t word = ++b->n_groups, id = -1;
    if (t->eos_text && strlen(t->eos_text) == len && memcmp(t->eos_text, s, len) == 0) {
        id = t->eos_id;
    } else if (t->vocab_id) {
        strbuf key = {0};
        if (sb_add(&key, s, len, b->err) || sb_add(&key, "</w>", 4, b->err)) {
            free(key.p);
            return b->err->code;
        }
        id = t->vocab_id(t->ctx, key.p, key.len);
        free(key.p);
    }
    if (id >= 0) return tv_add(&b->groups, (kn_prompt_token){id, -1, 0, word, weight}, b->err);
    int32_t *ids;
    size_t n;
    if (t->encode(t->ctx, s, len, &ids, &n, b->err)) return b->err->code;
    /* Python's ids[tokens_start:-1] or ids[tokens_start:] */
    size_t hi = t->drop_last ? (n ? n - 1 : 0) : n;
    int rc = KN_OK;
    for (size_t i = t->tokens_start; i < hi && !rc; i++)
        rc = tv_add(&b->groups, (kn_prompt_token){ids[i], -1, 0, word, weight}, b->err);
    free(ids);
    return rc;
}

static bool is_space_at(const char *s, size_t len, size_t i, size_t *k) {
    uint32_t cp;
    *k = kn_utf8_decode((const uint8_t *)s + i, len - i, &cp);
    if (!*k) {
        *k = 1; /* a stray byte is a non-space character of its own */
        return false;
    }
    return kn_uc_is_py_space(cp);
}

/* The next word of Python's str.split() from *pos; false when none is left. */
static bool next_word(const char *s, size_t len, size_t *pos, size_t *start, size_t *end) {
    size_t i = *pos, k;
    while (i < len && is_space_at(s, len, i, &k)) i += k;
    if (i == len) return false;
    *start = i;
    while (i < len && !is_space_at(s, len, i, &k)) i += k;
    *end = *pos = i;
    return true;
}

static size_t count_chars(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += ((uint8_t)s[i] & 0xC0) != 0x80;
    return n;
}

static size_t skip_chars(const char *s, size_t len, size_t chars) {
    size_t i = 0;
    for (; i < len && chars; chars--)
        for (i++; i < len && ((uint8_t)s[i] & 0xC0) == 0x80; i++) {}
    return i;
}

/* Length of a name as printed in messages: the start says enough. */
static int shown(size_t len) { return len < 100 ? (int)len : 100; }

static int find_embedding(builder *b, const char *name, size_t len, bool *found, int32_t *handle, size_t *rows) {
    *found = false;
    if (b->emb->find(b->emb->ctx, name, len, found, handle, rows, b->err))
        return kn_err_wrap(b->err, "embedding:%.*s", shown(len), name);
    if (*found && *rows == 0) return kn_fail(b->err, KN_ERR_INVALID, "embedding:%.*s has no rows", shown(len), name);
    return KN_OK;
}

/* "embedding:NAME rest": NAME's rows as one group (if it exists), then the rest with
 * its whitespace collapsed, as ComfyUI's _try_get_embedding does. */
static int add_embedding_piece(builder *b, const char *s, size_t len, double weight) {
    s += EMBEDDING_LEN, len -= EMBEDDING_LEN;
    while (len && *s == '\n') s++, len--;
    while (len && s[len - 1] == '\n') len--;
    size_t pos = 0, ns, ne, ws, we;
    if (!next_word(s, len, &pos, &ns, &ne))
        return kn_fail(b->err, KN_ERR_INVALID, "prompt: 'embedding:' without a name (ComfyUI raises IndexError)");
    strbuf rest = {0};
    bool found = false;
    int32_t handle = -1;
    size_t rows = 0;
    const char *name = s + ns;
    size_t name_len = ne - ns;
    if (sb_add(&rest, "", 0, b->err)) goto fail;
    for (bool first = true; next_word(s, len, &pos, &ws, &we); first = false)
        if (sb_add(&rest, " ", !first, b->err) || sb_add(&rest, s + ws, we - ws, b->err)) goto fail;
    if (find_embedding(b, name, name_len, &found, &handle, &rows)) goto fail;
    size_t a = 0, z = name_len;
    while (a < z && name[a] == ',') a++;
    while (z > a && name[z - 1] == ',') z--;
    if (!found && z - a < name_len) {
        /* Retried without the commas, which go back in front of the rest. ComfyUI
         * cuts them off the end by the stripped name's length in characters, which
         * is only right for trailing commas; so is this. */
        if (find_embedding(b, name + a, z - a, &found, &handle, &rows)) goto fail;
        size_t cut = skip_chars(name, name_len, count_chars(name + a, z - a));
        strbuf lead = {0};
        bool failed = sb_add(&lead, name + cut, name_len - cut, b->err) || sb_add(&lead, " ", 1, b->err) ||
                      sb_add(&lead, rest.p, rest.len, b->err);
        free(rest.p);
        rest = lead;
        if (failed) goto fail;
    }
    if (found) {
        int32_t word = ++b->n_groups;
        for (size_t r = 0; r < rows; r++)
            if (tv_add(&b->groups, (kn_prompt_token){-1, handle, (int32_t)r, word, weight}, b->err)) goto fail;
    }
    if (rest.len && add_text_group(b, rest.p, rest.len, weight)) goto fail;
    free(rest.p);
    return KN_OK;
fail:
    free(rest.p);
    return b->err->code;
}

/* Splits a segment at " embedding:" / "\nembedding:" (the separator's first char is
 * dropped) and turns each non-empty piece into groups. */
static int add_segment(builder *b, const char *s, size_t len, double weight) {
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        bool sep = i + 1 + EMBEDDING_LEN <= len && (s[i] == ' ' || s[i] == '\n') &&
                   memcmp(s + i + 1, EMBEDDING, EMBEDDING_LEN) == 0;
        if (!sep && i < len) continue;
        if (i > start) {
            bool is_emb = b->emb && i - start >= EMBEDDING_LEN && memcmp(s + start, EMBEDDING, EMBEDDING_LEN) == 0;
            int rc = is_emb ? add_embedding_piece(b, s + start, i - start, weight)
                            : add_text_group(b, s + start, i - start, weight);
            if (rc) return rc;
        }
        start = i + 1;
    }
    return KN_OK;
}

/* ---- groups -> chunks ---------------------------------------------------------- */

typedef struct {
    tokvec out;
    size_t *start;
    size_t n_chunks, cap;
} chunker;

static int new_chunk(chunker *c, const kn_prompt_tokenizer *t, kn_err *err) {
    GROW(c, start, cap, c->n_chunks + 2, err);
    c->start[c->n_chunks++] = c->out.n;
    return t->start_token >= 0 ? tv_add(&c->out, (kn_prompt_token){t->start_token, -1, 0, 0, 1.0}, err) : KN_OK;
}

static int add_special(chunker *c, int32_t id, size_t count, kn_err *err) {
    for (size_t i = 0; i < count; i++)
        if (tv_add(&c->out, (kn_prompt_token){id, -1, 0, 0, 1.0}, err)) return err->code;
    return KN_OK;
}

/* ComfyUI's batching: a group that does not fit in the current chunk (room for the
 * end token kept) is split across chunks when large, or moved whole to a new chunk
 * (the current one closed and padded) when small. */
static int make_chunks(const kn_prompt_tokenizer *t, const tokvec *g, chunker *c, kn_err *err) {
    size_t has_end = t->end_token >= 0, limit = t->max_length - has_end;
    if (new_chunk(c, t, err)) return err->code;
    for (size_t a = 0; a < g->n;) {
        size_t b = a;
        while (b < g->n && g->t[b].word == g->t[a].word) b++;
        bool large = b - a >= LARGE_GROUP;
        while (a < b) {
            size_t used = c->out.n - c->start[c->n_chunks - 1];
            if (b - a + used <= limit) {
                for (; a < b; a++)
                    if (tv_add(&c->out, g->t[a], err)) return err->code;
                break;
            }
            size_t room = limit - used;
            if (large) {
                for (size_t k = 0; k < room; k++, a++)
                    if (tv_add(&c->out, g->t[a], err)) return err->code;
                if (has_end && add_special(c, t->end_token, 1, err)) return err->code;
            } else if ((has_end && add_special(c, t->end_token, 1, err)) ||
                       (t->pad_to_max_length && add_special(c, t->pad_token, room, err))) {
                return err->code;
            }
            if (new_chunk(c, t, err)) return err->code;
        }
    }
    if (has_end && add_special(c, t->end_token, 1, err)) return err->code;
    size_t used = c->out.n - c->start[c->n_chunks - 1];
    if (t->pad_to_max_length && used < t->max_length && add_special(c, t->pad_token, t->max_length - used, err))
        return err->code;
    used = c->out.n - c->start[c->n_chunks - 1];
    if (used < t->min_length && add_special(c, t->pad_token, t->min_length - used, err)) return err->code;
    c->start[c->n_chunks] = c->out.n;
    return KN_OK;
}

void kn_prompt_chunks_free(kn_prompt_chunks *c) {
    if (!c) return;
    free(c->tokens);
    free(c->chunk_start);
    *c = (kn_prompt_chunks){0};
}

int kn_prompt_tokenize(const kn_prompt_tokenizer *tok, const kn_prompt_embeddings *emb, const char *text, size_t len,
                       kn_prompt_chunks *out, kn_err *err) {
    *out = (kn_prompt_chunks){0};
    /* A small group must fit a fresh chunk, or ComfyUI's loop never ends. */
    if (tok->max_length < (size_t)(LARGE_GROUP + (tok->start_token >= 0) + (tok->end_token >= 0)))
        return kn_fail(err, KN_ERR_INVALID, "prompt: chunk length %zu is too short", tok->max_length);
    strbuf esc = {0}, seg = {0};
    spanvec spans = {0};
    builder b = {tok, emb, {0}, 0, err};
    chunker c = {0};
    int rc = segments(text, len, tok->weights, &esc, &spans, err);
    for (size_t i = 0; !rc && i < spans.n; i++) {
        rc = unescape(esc.p + spans.v[i].off, spans.v[i].len, &seg, err);
        if (!rc) rc = add_segment(&b, seg.p, seg.len, spans.v[i].weight);
    }
    if (!rc) rc = make_chunks(tok, &b.groups, &c, err);
    free(esc.p);
    free(seg.p);
    free(spans.v);
    free(b.groups.t);
    if (rc) {
        free(c.out.t);
        free(c.start);
        return rc;
    }
    *out = (kn_prompt_chunks){c.out.t, c.out.n, c.start, c.n_chunks};
    return KN_OK;
}

/* ---- families -------------------------------------------------------------------- */

/* The id of a special token by its text, or -1 with err set. */
static int32_t special_id(const kn_prompt_tokenizer *tok, const char *text, kn_err *err) {
    int32_t id = tok->vocab_id(tok->ctx, text, strlen(text));
    if (id < 0) kn_fail(err, KN_ERR_FORMAT, "prompt: the tokenizer has no %s token", text);
    return id;
}

static int qwen_encode(const void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, kn_err *err) {
    return kn_bpe_encode(ctx, text, len, ids, n, err);
}

static int32_t qwen_vocab_id(const void *ctx, const char *key, size_t len) { return kn_bpe_token_id(ctx, key, len); }

static const char *const qwen_templates[] = {
    [KN_QWEN_IMAGE] = "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
                      "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
                      "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
    [KN_QWEN_Z_IMAGE] = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
    [KN_QWEN_IMAGE_EDIT] = "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
                           "texture, objects, background), then explain how the user's text instruction should "
                           "alter or modify the image. Generate a new image that meets the user's requirements "
                           "while maintaining consistency with the original input where appropriate.<|im_end|>\n"
                           "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
                           "<|im_start|>assistant\n",
    [KN_QWEN_IMAGE_EDIT_PLUS] = "<|im_start|>system\nDescribe the key features of the input image (color, shape, "
                                "size, texture, objects, background), then explain how the user's text instruction "
                                "should alter or modify the image. Generate a new image that meets the user's "
                                "requirements while maintaining consistency with the original input where "
                                "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
};

const char *kn_prompt_qwen_template_text(kn_qwen_family family) {
    return (unsigned)family <= KN_QWEN_IMAGE_EDIT_PLUS ? qwen_templates[family] : NULL;
}

int kn_prompt_qwen(const kn_bpe *bpe, kn_qwen_family family, const kn_prompt_embeddings *emb, const char *text,
                   size_t len, kn_prompt_chunks *out, kn_err *err) {
    if ((unsigned)family > KN_QWEN_IMAGE_EDIT_PLUS) {
        *out = (kn_prompt_chunks){0};
        return kn_fail(err, KN_ERR_INVALID, "prompt: unknown Qwen family %d", (int)family);
    }
    return kn_prompt_qwen_template(bpe, family, qwen_templates[family], emb, text, len, out, err);
}

int kn_prompt_qwen_template(const kn_bpe *bpe, kn_qwen_family family, const char *tmpl,
                            const kn_prompt_embeddings *emb, const char *text, size_t len, kn_prompt_chunks *out,
                            kn_err *err) {
    *out = (kn_prompt_chunks){0};
    const char *hole = tmpl ? strstr(tmpl, "{}") : NULL;
    if ((unsigned)family > KN_QWEN_IMAGE_EDIT_PLUS || !hole)
        return kn_fail(err, KN_ERR_INVALID, "prompt: Qwen family %d with a template %s", (int)family,
                       tmpl ? "without a {} for the prompt" : "missing");
    kn_prompt_tokenizer tok = {
        .encode = qwen_encode, .vocab_id = qwen_vocab_id, .ctx = bpe,
        .start_token = -1, .end_token = -1,
        .max_length = 99999999, .min_length = 1,
        .eos_text = "<|im_end|>",
    };
    if ((tok.pad_token = special_id(&tok, "<|endoftext|>", err)) < 0 ||
        (tok.eos_id = special_id(&tok, "<|im_end|>", err)) < 0)
        return err->code;

    bool qwen_image = family != KN_QWEN_Z_IMAGE;
    bool chat = qwen_image && ((len >= 12 && memcmp(text, "<|im_start|>", 12) == 0) ||
                               (len >= 19 && memcmp(text, "<|start_header_id|>", 19) == 0));
    strbuf full = {0};
    bool failed = chat ? sb_add(&full, text, len, err)
                       : sb_add(&full, tmpl, (size_t)(hole - tmpl), err) || sb_add(&full, text, len, err) ||
                             sb_add(&full, hole + 2, strlen(hole + 2), err);
    int rc = failed ? err->code : kn_prompt_tokenize(&tok, emb, full.p, full.len, out, err);
    free(full.p);
    for (size_t i = 0; !rc && qwen_image && i < out->n_tokens; i++) {
        if (out->tokens[i].id < 0) {
            kn_prompt_chunks_free(out);
            /* ComfyUI compares every token with the image-pad id, and that fails on
             * an embedding's row tensor. */
            rc = kn_fail(err, KN_ERR_UNSUPPORTED, "Qwen-Image prompt: textual-inversion embeddings are not "
                                                  "supported (ComfyUI raises on them too)");
        }
    }
    return rc;
}

/* ---- Flux.1: CLIP-L and T5-XXL ---------------------------------------------------- */

static int clip_encode(const void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, kn_err *err) {
    return kn_clip_bpe_encode(ctx, text, len, true, ids, n, err);
}

static int32_t clip_vocab_id(const void *ctx, const char *key, size_t len) {
    return kn_clip_bpe_token_id(ctx, key, len);
}

int kn_prompt_clip_l(const kn_clip_bpe *clip, const kn_prompt_embeddings *emb, const char *text, size_t len,
                     kn_prompt_chunks *out, kn_err *err) {
    *out = (kn_prompt_chunks){0};
    kn_prompt_tokenizer tok = {
        .encode = clip_encode, .vocab_id = clip_vocab_id, .ctx = clip,
        .max_length = 77, .pad_to_max_length = true,
        .tokens_start = 1, .drop_last = true, .eos_text = "<|endoftext|>", .weights = true,
    };
    if ((tok.start_token = special_id(&tok, "<|startoftext|>", err)) < 0 ||
        (tok.end_token = special_id(&tok, "<|endoftext|>", err)) < 0)
        return err->code;
    tok.pad_token = tok.eos_id = tok.end_token; /* ComfyUI's pad_with_end */
    return kn_prompt_tokenize(&tok, emb, text, len, out, err);
}

static int t5_encode(const void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, kn_err *err) {
    return kn_spm_encode(ctx, text, len, true, ids, n, err);
}

static int32_t t5_vocab_id(const void *ctx, const char *key, size_t len) { return kn_spm_token_id(ctx, key, len); }

int kn_prompt_t5(const kn_spm *t5, size_t min_length, const kn_prompt_embeddings *emb, const char *text, size_t len,
                 kn_prompt_chunks *out, kn_err *err) {
    *out = (kn_prompt_chunks){0};
    kn_prompt_tokenizer tok = {
        .encode = t5_encode, .vocab_id = t5_vocab_id, .ctx = t5,
        .start_token = -1, .pad_token = 0, /* ComfyUI pads T5 with a literal 0 */
        .max_length = 99999999, .min_length = min_length,
        .drop_last = true, .eos_text = "</s>", .weights = true,
    };
    if ((tok.end_token = special_id(&tok, "</s>", err)) < 0) return err->code;
    tok.eos_id = tok.end_token;
    return kn_prompt_tokenize(&tok, emb, text, len, out, err);
}
