#include "kernels/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/error.h"

/* Growable output string; `failed` sticks after the first allocation failure
 * so writers can append unconditionally and check once at the end. */
typedef struct {
    char *s;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    size_t need;
    if (kn_add_size(b->len, n + 1, &need)) {
        b->failed = 1;
        return;
    }
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need) {
            if (kn_mul_size(cap, 2, &cap)) {
                b->failed = 1;
                return;
            }
        }
        char *p = realloc(b->s, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(strbuf *b, const char *fmt, ...) KN_PRINTF(2, 3);
static void sb_printf(strbuf *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        b->failed = 1; /* only short numeric fragments go through here */
        return;
    }
    sb_put(b, tmp, (size_t)n);
}

static char *sb_finish(strbuf *b) {
    if (b->failed) {
        free(b->s);
        return NULL;
    }
    if (!b->s) sb_put(b, "", 0);
    return b->failed ? NULL : b->s;
}

void kn_py_float(double d, char *buf, size_t len) {
    if (isnan(d)) {
        snprintf(buf, len, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, len, d < 0 ? "-inf" : "inf");
        return;
    }
    /* Shortest decimal that reads back as the same double, as repr does. */
    char sci[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec - 1, d);
        if (strtod(sci, NULL) == d) break;
    }
    /* sci is "[-]D[.DDD]e[+-]X..": split into sign, digits and exponent. */
    char digits[24];
    size_t nd = 0;
    const char *p = sci;
    int neg = *p == '-';
    if (neg) p++;
    for (; *p && *p != 'e'; p++)
        if (*p != '.' && nd < sizeof digits - 1) digits[nd++] = *p;
    digits[nd] = '\0';
    int exp = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0') digits[--nd] = '\0';

    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (exp < -4 || exp >= 16) { /* Python switches to exponent notation here */
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, nd - 1);
            o += nd - 1;
        }
        snprintf(out + o, sizeof out - o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -exp - 1; i++) out[o++] = '0';
        memcpy(out + o, digits, nd);
        o += nd;
        out[o] = '\0';
    } else {
        size_t whole = (size_t)exp + 1;
        for (size_t i = 0; i < whole; i++) out[o++] = i < nd ? digits[i] : '0';
        out[o++] = '.';
        if (nd > whole) {
            memcpy(out + o, digits + whole, nd - whole);
            o += nd - whole;
        } else {
            out[o++] = '0'; /* integral floats keep ".0", as in "8.0" */
        }
        out[o] = '\0';
    }
    snprintf(buf, len, "%s", out);
}

/* ascii: Python's ensure_ascii, every character outside ' '..'~' as \uXXXX
 * (a surrogate pair above U+FFFF). Jansson strings are valid UTF-8. */
static void put_json_string(strbuf *b, const char *s, size_t n, int ascii) {
    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        case '\b': sb_put(b, "\\b", 2); break;
        case '\f': sb_put(b, "\\f", 2); break;
        default:
            if (c < 0x20 || (ascii && c == 0x7f)) {
                sb_printf(b, "\\u%04x", c);
            } else if (ascii && c >= 0x80) {
                int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
                uint32_t cp = c & (0xFFu >> (len + 1));
                for (int k = 1; k < len && i + 1 < n; k++) cp = cp << 6 | ((unsigned char)s[++i] & 0x3F);
                if (cp >= 0x10000) {
                    cp -= 0x10000;
                    sb_printf(b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
                } else {
                    sb_printf(b, "\\u%04x", cp);
                }
            } else {
                sb_put(b, (const char *)&c, 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

static void put_newline(strbuf *b, int indent, int level) {
    sb_put(b, "\n", 1);
    for (int i = 0; i < indent * level; i++) sb_put(b, " ", 1);
}

static void put_json(strbuf *b, const json_t *v, int indent, int level, int ascii) {
    char num[64];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (json_object_size(v) == 0) {
            sb_str(b, "{}");
            break;
        }
        sb_put(b, "{", 1);
        const char *key;
        json_t *item;
        int first = 1;
        json_object_foreach((json_t *)v, key, item) {
            if (!first) sb_str(b, indent ? "," : ", ");
            first = 0;
            if (indent) put_newline(b, indent, level + 1);
            put_json_string(b, key, strlen(key), ascii);
            sb_str(b, ": ");
            put_json(b, item, indent, level + 1, ascii);
        }
        if (indent) put_newline(b, indent, level);
        sb_put(b, "}", 1);
        break;
    }
    case JSON_ARRAY: {
        if (json_array_size(v) == 0) {
            sb_str(b, "[]");
            break;
        }
        sb_put(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) sb_str(b, indent ? "," : ", ");
            if (indent) put_newline(b, indent, level + 1);
            put_json(b, json_array_get(v, i), indent, level + 1, ascii);
        }
        if (indent) put_newline(b, indent, level);
        sb_put(b, "]", 1);
        break;
    }
    case JSON_STRING:
        if (kn_json_u64_digits(v)) sb_str(b, kn_json_u64_digits(v));
        else put_json_string(b, json_string_value(v), json_string_length(v), ascii);
        break;
    case JSON_INTEGER: sb_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); break;
    case JSON_REAL:
        kn_py_float(json_real_value(v), num, sizeof num);
        sb_str(b, num);
        break;
    case JSON_TRUE: sb_str(b, "true"); break;
    case JSON_FALSE: sb_str(b, "false"); break;
    case JSON_NULL: sb_str(b, "null"); break;
    }
}

char *kn_json_dumps(const json_t *v, int indent) {
    strbuf b = {0};
    put_json(&b, v, indent < 0 ? 0 : indent, 0, 0);
    return sb_finish(&b);
}

char *kn_py_json_dumps(const json_t *v) {
    strbuf b = {0};
    put_json(&b, v, 0, 0, 1);
    return sb_finish(&b);
}

/* Python's repr of a str: single quotes unless the text has a ' and no ". */
static void put_py_string_repr(strbuf *b, const char *s, size_t n) {
    char quote = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    sb_put(b, &quote, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == (unsigned char)quote || c == '\\') {
            sb_put(b, "\\", 1);
            sb_put(b, (const char *)&c, 1);
        } else if (c == '\n') {
            sb_str(b, "\\n");
        } else if (c == '\r') {
            sb_str(b, "\\r");
        } else if (c == '\t') {
            sb_str(b, "\\t");
        } else if (c < 0x20 || c == 0x7f) {
            sb_printf(b, "\\x%02x", c);
        } else if (c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
                   (unsigned char)s[i + 1] < 0xa0) {
            sb_printf(b, "\\x%02x", (unsigned char)s[i + 1]); /* C1 controls, UTF-8 C2 80..C2 9F */
            i++;
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, &quote, 1);
}

static void put_py(strbuf *b, const json_t *v, int repr) {
    char num[64];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        sb_put(b, "{", 1);
        const char *key;
        json_t *item;
        int first = 1;
        json_object_foreach((json_t *)v, key, item) {
            if (!first) sb_str(b, ", ");
            first = 0;
            put_py_string_repr(b, key, strlen(key));
            sb_str(b, ": ");
            put_py(b, item, 1);
        }
        sb_put(b, "}", 1);
        break;
    }
    case JSON_ARRAY:
        sb_put(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) sb_str(b, ", ");
            put_py(b, json_array_get(v, i), 1);
        }
        sb_put(b, "]", 1);
        break;
    case JSON_STRING:
        if (kn_json_u64_digits(v)) sb_str(b, kn_json_u64_digits(v));
        else if (repr) put_py_string_repr(b, json_string_value(v), json_string_length(v));
        else sb_put(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER: sb_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); break;
    case JSON_REAL:
        kn_py_float(json_real_value(v), num, sizeof num);
        sb_str(b, num);
        break;
    case JSON_TRUE: sb_str(b, "True"); break;
    case JSON_FALSE: sb_str(b, "False"); break;
    case JSON_NULL: sb_str(b, "None"); break;
    }
}

char *kn_py_str(const json_t *v) {
    strbuf b = {0};
    put_py(&b, v, 0);
    return sb_finish(&b);
}

char *kn_py_repr(const json_t *v) {
    strbuf b = {0};
    put_py(&b, v, 1);
    return sb_finish(&b);
}

/* 2^53: beyond it a JavaScript number no longer holds every integer. */
#define KN_JS_SAFE ((json_int_t)1 << 53)
#define KN_TWO63 9223372036854775808.0

static json_t *js_number(double d) {
    if (d == floor(d) && fabs(d) < KN_TWO63) return json_integer((json_int_t)d);
    return json_real(d);
}

json_t *kn_json_js_copy(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i >= -KN_JS_SAFE && i <= KN_JS_SAFE) return json_integer(i);
        return js_number((double)i);
    }
    case JSON_REAL: return js_number(json_real_value(v));
    case JSON_STRING: {
        uint64_t u;
        return kn_json_u64_value(v, &u) ? js_number((double)u) : json_deep_copy(v);
    }
    case JSON_ARRAY: {
        json_t *a = json_array();
        for (size_t i = 0; a && i < json_array_size(v); i++) {
            json_t *item = kn_json_js_copy(json_array_get(v, i));
            if (!item || json_array_append_new(a, item) != 0) {
                json_decref(a);
                a = NULL;
            }
        }
        return a;
    }
    case JSON_OBJECT: {
        json_t *o = json_object();
        const char *key;
        json_t *item;
        json_object_foreach((json_t *)v, key, item) {
            if (!o) break;
            json_t *c = kn_json_js_copy(item);
            if (!c || json_object_set_new(o, key, c) != 0) {
                json_decref(o);
                o = NULL;
            }
        }
        return o;
    }
    default: return json_deep_copy(v);
    }
}
