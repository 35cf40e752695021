/* Python conversions of JSON values (graph/pyconv.h). */
#include "graph/pyconv.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kernels/json.h"

/* Python's type() name of what json.loads makes of a value. */
const char *kn_py_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "dict";
    case JSON_ARRAY: return "list";
    case JSON_STRING: return "str";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    case JSON_NULL: return "NoneType";
    }
    return "object";
}

/* Python int()/float() accept surrounding whitespace, a sign and single
 * underscores between digits; copies the literal without them into buf.
 * Returns 0 when the text is no decimal literal of the wanted form. */
static int numeric_literal(const char *s, int allow_float, char *buf, size_t len) {
    while (isspace((unsigned char)*s)) s++;
    size_t end = strlen(s);
    while (end > 0 && isspace((unsigned char)s[end - 1])) end--;
    size_t o = 0;
    int digits = 0, prev_digit = 0, seen_dot = 0, seen_exp = 0;
    for (size_t i = 0; i < end; i++) {
        char ch = s[i];
        if (o + 2 >= len) return 0;
        if (isdigit((unsigned char)ch)) {
            buf[o++] = ch;
            digits++;
            prev_digit = 1;
        } else if (ch == '_') {
            if (!prev_digit || i + 1 >= end || !isdigit((unsigned char)s[i + 1])) return 0;
            prev_digit = 0;
        } else if ((ch == '+' || ch == '-') && (i == 0 || (seen_exp && (s[i - 1] == 'e' || s[i - 1] == 'E')))) {
            buf[o++] = ch;
            prev_digit = 0;
        } else if (allow_float && ch == '.' && !seen_dot && !seen_exp) {
            buf[o++] = ch;
            seen_dot = 1;
            prev_digit = 0;
        } else if (allow_float && (ch == 'e' || ch == 'E') && digits && !seen_exp) {
            buf[o++] = ch;
            seen_exp = 1;
            digits = 0; /* the exponent needs digits of its own */
            prev_digit = 0;
        } else {
            return 0;
        }
    }
    buf[o] = '\0';
    return digits > 0;
}

/* Sets *out to the converted value (new reference) or fills exc with the
 * message of the exception Python would raise; returns 0 on success. */
int kn_py_to_int(const json_t *v, json_t **out, char *exc, size_t len) {
    char lit[512];
    switch (json_typeof(v)) {
    case JSON_INTEGER: *out = json_incref((json_t *)v); return 0;
    case JSON_TRUE:
    case JSON_FALSE: *out = json_integer(json_is_true(v)); return 0;
    case JSON_REAL: {
        double t = trunc(json_real_value(v));
        /* int() of a huge float is a huge Python int: keep it as a whole real. */
        *out = fabs(t) < 9223372036854775808.0 ? json_integer((json_int_t)t) : json_real(t);
        return 0;
    }
    case JSON_STRING:
        if (kn_json_u64_digits(v)) {
            *out = json_incref((json_t *)v);
            return 0;
        } else if (numeric_literal(json_string_value(v), 0, lit, sizeof lit)) {
            errno = 0;
            long long i = strtoll(lit, NULL, 10);
            if (errno == ERANGE) {
                snprintf(exc, len, "integers beyond 64 bits are not supported");
                return 1;
            }
            *out = json_integer(i);
            return 0;
        } else {
            char *r = kn_py_repr(v);
            snprintf(exc, len, "invalid literal for int() with base 10: %s", r ? r : "?");
            free(r);
            return 1;
        }
    default:
        snprintf(exc, len, "int() argument must be a string, a bytes-like object or a real number, not '%s'",
                 kn_py_type_name(v));
        return 1;
    }
}

int kn_py_to_float(const json_t *v, json_t **out, char *exc, size_t len) {
    char lit[512];
    double d;
    switch (json_typeof(v)) {
    case JSON_INTEGER: d = (double)json_integer_value(v); break;
    case JSON_REAL: d = json_real_value(v); break;
    case JSON_TRUE:
    case JSON_FALSE: d = json_is_true(v); break;
    case JSON_STRING:
        if (kn_json_u64_digits(v)) {
            uint64_t u = 0;
            kn_json_u64_value(v, &u);
            d = (double)u;
            break;
        }
        if (!numeric_literal(json_string_value(v), 1, lit, sizeof lit)) {
            char word[16];
            const char *s = json_string_value(v);
            while (isspace((unsigned char)*s)) s++;
            if (*s == '+' || *s == '-') s++;
            size_t n = strlen(s);
            while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
            snprintf(word, sizeof word, "%.*s", n < sizeof word ? (int)n : 0, s);
            /* Python parses these spellings; Kiln refuses non-finite values. */
            if (strcasecmp(word, "inf") == 0 || strcasecmp(word, "infinity") == 0 || strcasecmp(word, "nan") == 0) {
                snprintf(exc, len, "non-finite values are not supported");
            } else {
                char *r = kn_py_repr(v);
                snprintf(exc, len, "could not convert string to float: %s", r ? r : "?");
                free(r);
            }
            return 1;
        }
        d = strtod(lit, NULL);
        break;
    default:
        snprintf(exc, len, "float() argument must be a string or a real number, not '%s'", kn_py_type_name(v));
        return 1;
    }
    if (!isfinite(d)) {
        snprintf(exc, len, "non-finite values are not supported");
        return 1;
    }
    *out = json_real(d);
    return 0;
}

/* Python's bool(value). */
int kn_py_truthy(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return json_object_size(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_TRUE: return 1;
    default: return 0;
    }
}
