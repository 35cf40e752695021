/* kn_st: safetensors files, memory-mapped and fully validated.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"k": "v"}}
 * then the data region; offsets are relative to its start.
 *
 * kn_st_open rejects, with a message naming the file and tensor: a header length
 * that overflows or exceeds the file or KN_ST_MAX_HEADER, JSON that is not valid
 * UTF-8 or has duplicate names, unknown dtypes, shapes whose byte count
 * overflows or differs from the offsets, offsets outside the data region,
 * overlapping tensors. Tensors point into the mapping (no copy) and stay valid
 * until kn_st_close.
 *
 * A view (kn_st_view) is a kn_st_file of the tensors whose names start with a
 * prefix, named without it: one part of a single-file checkpoint
 * ("vae.", "text_encoders.t5xxl.transformer."), so a loader that takes a
 * file takes that part unchanged. It shares its file's mapping and holds a
 * reference to it: the mapping goes when the file and all its views are
 * closed, in any order. A file and its views are used from one thread. */
#ifndef KN_SAFETENSORS_H
#define KN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/tensor.h"

#define KN_ST_MAX_HEADER ((uint64_t)100 << 20) /* the format's own 100 MB cap */

typedef struct kn_st_file kn_st_file;

int kn_st_open(kn_st_file **out, const char *path, kn_err *err);
/* Parse from memory (the buffer must outlive the file object; used by fuzzing). */
int kn_st_open_memory(kn_st_file **out, const void *buf, size_t len, const char *label, kn_err *err);
/* Releases f; the mapping goes with the last of f and its views (NULL-safe). */
void kn_st_close(kn_st_file *f);
/* A view of f (see above): its tensors are f's whose names start with `prefix`
 * (none is a valid, empty view), in f's order, the prefix stripped from their
 * names, pointing at f's data; kn_st_get finds a weight's scale_weight within
 * the view; metadata and data region are f's. Its path, which messages name,
 * is "<f's path> (<prefix>*)" (f's for ""). Close it with kn_st_close. */
int kn_st_view(kn_st_file **out, kn_st_file *f, const char *prefix, kn_err *err);

/* KN_ERR_FORMAT naming the file, the first tensor holding a NaN or an
 * infinity, the value and its element; KN_OK when every float is finite.
 * Reads every byte of the data: model loaders call it once per load, not
 * the validation hooks, which read headers only. The pages it read are
 * dropped again (kn_st_drop_pages), so a load does not leave the whole file
 * resident: a weight comes back when a forward first reads it, and one that
 * is never read (most of a vocabulary's embedding rows) stays out. */
int kn_st_check_finite(const kn_st_file *f, kn_err *err);

/* Drops the pages of f's tensors from the process's resident memory
 * (madvise MADV_DONTNEED on the read-only private mapping): they stay in the
 * kernel's page cache and fault back in on the next read, so every tensor
 * stays valid. A no-op for files opened from memory or copied for alignment. */
void kn_st_drop_pages(const kn_st_file *f);

const char *kn_st_path(const kn_st_file *f);
int kn_st_count(const kn_st_file *f);
const kn_tensor *kn_st_at(const kn_st_file *f, int i);   /* in file order */
const kn_tensor *kn_st_find(const kn_st_file *f, const char *name); /* NULL if absent */
/* Like kn_st_find but an absent name is an error naming the file. For a
 * "<x>.weight" stored as fp8 with a sibling "<x>.scale_weight", out->scale is
 * set from it (ComfyUI "fp8_scaled" checkpoints). */
int kn_st_get(const kn_st_file *f, const char *name, kn_tensor *out, kn_err *err);
/* The data region every tensor points into (the mapping, or an aligned copy
 * when the file leaves its elements misaligned) and its length. */
const void *kn_st_data(const kn_st_file *f, size_t *len);
/* Residency (the loaded-model store's budget, nodes/model_store.h): the bytes
 * of the data region f's tensors span (a view: its part of the file's) and
 * whether they are file pages (*mapped 1) or the heap copy of a misaligned
 * file (0). */
size_t kn_st_span_bytes(const kn_st_file *f, int *mapped);
/* Drops f's file pages from this process (madvise MADV_DONTNEED on its span
 * of the read-only private mapping) and, as advice, from the page cache
 * (posix_fadvise DONTNEED; the file stays open for it while mapped). f stays
 * valid: its pages fault back in from the file when read again. A heap copy
 * stays (only the pages it was read from go); a memory buffer is left alone. */
void kn_st_release(const kn_st_file *f);
/* Value of a __metadata__ string, or NULL. */
const char *kn_st_metadata(const kn_st_file *f, const char *key);

/* A "__metadata__" entry (both strings UTF-8). */
typedef struct kn_st_meta {
    const char *key, *value;
} kn_st_meta;

/* Write tensors (CPU, contiguous) to a new file; names from t[i].name, in the
 * order given. The header is padded with spaces to 8 bytes, as the reference
 * writer pads it. kn_st_write_meta also writes n_meta metadata entries, in
 * order (none: no "__metadata__" key). */
int kn_st_write(const char *path, const kn_tensor *t, int n, kn_err *err);
int kn_st_write_meta(const char *path, const kn_tensor *t, int n, const kn_st_meta *meta, int n_meta, kn_err *err);

#endif
