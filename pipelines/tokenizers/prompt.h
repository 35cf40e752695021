/* kn_prompt: ComfyUI's prompt -> (token, weight, word id) chunks, the
 * SDTokenizer.tokenize_with_weights step every CLIPTextEncode runs, with each family's
 * settings: Flux.1's CLIP-L and T5-XXL, and the Qwen-Image / Z-Image templates.
 * Restated from tests/fixtures/tokenizers/README.md ("ComfyUI rules"), checked against
 * ComfyUI's own output (golden/comfyui).
 *
 * Contract:
 * - Text is UTF-8 with an explicit length; the family tokenizer decides what invalid
 *   UTF-8 means (the Qwen one refuses it).
 * - Weights: `(text)` multiplies by 1.1, `(text:1.3)` sets 1.3 (any Python float
 *   literal), nesting recurses, `\(` `\)` are literal parens (the backslash is
 *   dropped even when weights are off), unbalanced parens are ComfyUI's way.
 * - ` embedding:NAME` / `\nembedding:NAME` (or at the very start) asks
 *   kn_prompt_embeddings for NAME; a missing one is dropped silently (ComfyUI only
 *   logs it), a found one becomes its rows. With no kn_prompt_embeddings it stays
 *   text, though still cut off as a piece of its own (the space before it dropped),
 *   as ComfyUI does.
 * - Output: one token array, cut into chunks by chunk_start (n_chunks + 1 entries,
 *   chunk c = tokens[chunk_start[c] .. chunk_start[c+1])). Owned by the caller,
 *   released with kn_prompt_chunks_free (also safe on a zeroed or failed result).
 * - Errors where ComfyUI raises: `embedding:` with no name, a found embedding in a
 *   Qwen-Image prompt, parentheses nested past KN_PROMPT_MAX_NESTING (ComfyUI dies of
 *   Python's recursion limit near 1000). */
#ifndef KN_PROMPT_H
#define KN_PROMPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"
#include "pipelines/tokenizers/bpe.h"
#include "pipelines/tokenizers/clip_bpe.h"
#include "pipelines/tokenizers/spm.h"

#define KN_PROMPT_MAX_NESTING 500

typedef struct kn_prompt_token {
    int32_t id;        /* token id, or -1 for a row of a textual-inversion embedding */
    int32_t embedding; /* when id == -1: the handle kn_prompt_embeddings.find gave */
    int32_t row;       /* when id == -1: the row of that embedding */
    int32_t word;      /* 0 for start/end/pad, else 1 + index of the token group */
    double weight;
} kn_prompt_token;

typedef struct kn_prompt_chunks {
    kn_prompt_token *tokens;
    size_t n_tokens;
    size_t *chunk_start;
    size_t n_chunks;
} kn_prompt_chunks;

void kn_prompt_chunks_free(kn_prompt_chunks *c);

/* One family's tokenizer and the settings ComfyUI's SDTokenizer holds for it. */
typedef struct kn_prompt_tokenizer {
    /* The family's tokenizer on one piece of text, adding its own BOS/EOS; *ids is
     * malloc'ed (or NULL when *n == 0). */
    int (*encode)(const void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, kn_err *err);
    /* Id of a vocabulary key taken literally, or -1 (ComfyUI's "word</w>" shortcut). */
    int32_t (*vocab_id)(const void *ctx, const char *key, size_t len);
    const void *ctx;
    int32_t start_token, end_token, pad_token; /* -1: none */
    size_t max_length;     /* chunk length, start and end included */
    bool pad_to_max_length;
    size_t min_length;     /* the last chunk is padded to this; 0: no minimum */
    size_t tokens_start;   /* ids dropped from the front of each piece's encoding */
    bool drop_last;        /* the tokenizer appends an end token: drop it */
    const char *eos_text;  /* a piece equal to this becomes [eos_id]; NULL: none */
    int32_t eos_id;
    bool weights;          /* parse (text:w); the Qwen families turn this off */
} kn_prompt_tokenizer;

/* Textual-inversion embeddings by name (ComfyUI's embeddings folder). */
typedef struct kn_prompt_embeddings {
    /* Looks NAME[0..len) up: *found, and when found its *handle and *rows (>= 1).
     * Returns KN_OK, or a status with err set when looking failed. */
    int (*find)(void *ctx, const char *name, size_t len, bool *found, int32_t *handle, size_t *rows, kn_err *err);
    void *ctx;
} kn_prompt_embeddings;

int kn_prompt_tokenize(const kn_prompt_tokenizer *tok, const kn_prompt_embeddings *emb, const char *text, size_t len,
                       kn_prompt_chunks *out, kn_err *err);

/* The weighting step alone: text split into (segment, weight), escapes resolved. */
typedef struct kn_prompt_segment {
    char *text;
    size_t len;
    double weight;
} kn_prompt_segment;

int kn_prompt_weights(const char *text, size_t len, kn_prompt_segment **segs, size_t *n, kn_err *err);
void kn_prompt_segments_free(kn_prompt_segment *segs, size_t n);

/* Qwen-Image (Qwen2.5-VL, key qwen25_7b) and Z-Image (Qwen3, key qwen3_4b): the
 * family's chat template around the prompt (Qwen-Image skips it for a prompt that
 * already starts with <|im_start|> or <|start_header_id|>), weights off, one chunk,
 * padded with <|endoftext|> to at least one token. KN_QWEN_IMAGE_EDIT is
 * Qwen-Image's template for prompts with input images (ComfyUI's
 * llama_template_images: the user turn opens with
 * <|vision_start|><|image_pad|><|vision_end|>); KN_QWEN_IMAGE_EDIT_PLUS the
 * template TextEncodeQwenImageEditPlus passes (the Edit system prompt with a
 * plain user turn; its "Picture N:" placeholders are in the text). Replacing
 * each <|image_pad|> by an image is the encoder's business. */
typedef enum { KN_QWEN_IMAGE, KN_QWEN_Z_IMAGE, KN_QWEN_IMAGE_EDIT, KN_QWEN_IMAGE_EDIT_PLUS } kn_qwen_family;

int kn_prompt_qwen(const kn_bpe *bpe, kn_qwen_family family, const kn_prompt_embeddings *emb, const char *text,
                   size_t len, kn_prompt_chunks *out, kn_err *err);
/* The family's chat template ("...{}..."). */
const char *kn_prompt_qwen_template_text(kn_qwen_family family);
/* The same with a chat template of the caller's ("...{}...": ComfyUI's
 * llama_template argument, e.g. TextEncodeQwenImageEditPlus's) in place of
 * the family's. */
int kn_prompt_qwen_template(const kn_bpe *bpe, kn_qwen_family family, const char *tmpl,
                            const kn_prompt_embeddings *emb, const char *text, size_t len, kn_prompt_chunks *out,
                            kn_err *err);

/* CLIP-L as Flux.1 uses it, ComfyUI key "l": weights on, chunks
 * of 77 = <|startoftext|> + 75 tokens + <|endoftext|>, each padded to 77 with
 * <|endoftext|>; pieces keep the tokenizer's ids without its BOS/EOS, and the
 * "piece</w>" vocabulary shortcut applies. */
int kn_prompt_clip_l(const kn_clip_bpe *clip, const kn_prompt_embeddings *emb, const char *text, size_t len,
                     kn_prompt_chunks *out, kn_err *err);

/* T5-XXL, ComfyUI key "t5xxl": weights on, no start token, one chunk ending in </s>,
 * padded with id 0 (ComfyUI's pad) to min_length tokens (Flux.1: 256, below). */
#define KN_PROMPT_T5_FLUX_MIN_LENGTH 256
int kn_prompt_t5(const kn_spm *t5, size_t min_length, const kn_prompt_embeddings *emb, const char *text, size_t len,
                 kn_prompt_chunks *out, kn_err *err);

#endif
