#include "kernels/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int kn_fail(kn_err *err, int code, const char *fmt, ...) {
    if (!err) return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

int kn_err_wrap(kn_err *err, const char *fmt, ...) {
    char prefix[512];
    char old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* the message may be cut at the buffer's end: context first matters most */
    size_t n = strlen(prefix);
    if (n > sizeof err->msg - 3) n = sizeof err->msg - 3;
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t room = sizeof err->msg - n - 3;
    size_t m = strnlen(old, room);
    memcpy(err->msg + n + 2, old, m);
    err->msg[n + 2 + m] = '\0';
    return err->code;
}

void kn_err_clear(kn_err *err) {
    err->code = KN_OK;
    err->msg[0] = '\0';
}

const char *kn_status_name(int code) {
    switch (code) {
    case KN_OK: return "ok";
    case KN_ERR_INVALID: return "invalid";
    case KN_ERR_IO: return "io";
    case KN_ERR_FORMAT: return "format";
    case KN_ERR_NOMEM: return "nomem";
    case KN_ERR_SHAPE: return "shape";
    case KN_ERR_UNSUPPORTED: return "unsupported";
    case KN_ERR_BACKEND: return "backend";
    case KN_ERR_NOT_FOUND: return "not_found";
    case KN_ERR_CANCELLED: return "cancelled";
    case KN_ERR_COMM: return "comm";
    }
    return "unknown";
}
