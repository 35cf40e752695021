/* kn_err: status codes and error messages with context.
 *
 * Contract: every fallible Kiln function returns an int status (KN_OK == 0) and,
 * on failure, writes a human-readable message into the kn_err it was given.
 * Callers add context on the way up with kn_err_wrap ("qwen_image_dit: " + msg),
 * so the final message names the file, node, input or tensor that failed.
 * Nothing in library code exits or aborts. */
#ifndef KN_ERROR_H
#define KN_ERROR_H

#include <stddef.h>

#if defined(__GNUC__)
#define KN_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define KN_PRINTF(fmt_idx, arg_idx)
#endif

enum {
    KN_OK = 0,
    KN_ERR_INVALID,     /* bad argument or input value */
    KN_ERR_IO,          /* open/read/mmap failed */
    KN_ERR_FORMAT,      /* malformed file contents */
    KN_ERR_NOMEM,       /* allocation failed or size overflow */
    KN_ERR_SHAPE,       /* tensor shape or dtype mismatch */
    KN_ERR_UNSUPPORTED, /* valid but not implemented here */
    KN_ERR_BACKEND,     /* a device or library call failed */
    KN_ERR_NOT_FOUND,   /* a named tensor, file or key is missing */
    KN_ERR_CANCELLED,   /* the caller asked the work to stop */
    KN_ERR_COMM,        /* another rank failed or did not answer in time */
};

typedef struct kn_err {
    int code;
    char msg[1024];
} kn_err;

/* Set code and message; returns code so callers can `return kn_fail(...)`. */
int kn_fail(kn_err *err, int code, const char *fmt, ...) KN_PRINTF(3, 4);
/* Prepend context to the current message; returns err->code. */
int kn_err_wrap(kn_err *err, const char *fmt, ...) KN_PRINTF(2, 3);
void kn_err_clear(kn_err *err);
const char *kn_status_name(int code);

/* Return the status of a fallible call when it fails (err already set). */
#define KN_TRY(x)                                                                                           \
    do {                                                                                                    \
        int kn_try_rc_ = (x);                                                                               \
        if (kn_try_rc_) return kn_try_rc_;                                                                  \
    } while (0)

/* Overflow-checked size arithmetic: return 0 on success, 1 on overflow. */
static inline int kn_mul_size(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out);
}
static inline int kn_add_size(size_t a, size_t b, size_t *out) {
    return __builtin_add_overflow(a, b, out);
}

#endif
