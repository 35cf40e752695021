/* kn_json_loadb and u64 values (kernels/json.h; issue 16, faults 6 and 9): integers from 2^63
 * to 2^64 - 1 load exactly and print back as the same digits, everything else loads as
 * jansson would; a BOM is skipped; "\u0000" and syntax errors are refused with Python's
 * line / column / char. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"
#include "check.h"

static json_t *load(const char *text, json_error_t *e) { return kn_json_loadb(text, strlen(text), e); }

/* text loads and prints (kn_json_dumps, one line) as want */
static void roundtrip(const char *text, const char *want) {
    json_error_t e;
    json_t *v = load(text, &e);
    char *s = v ? kn_json_dumps(v, 0) : NULL;
    CHECK(s && strcmp(s, want) == 0, "%s -> %s (want %s; %s)", text, s ? s : "NULL", want, v ? "" : e.text);
    free(s);
    json_decref(v);
}

static void refused(const char *text, const char *what, int line, int column, int position) {
    json_error_t e;
    json_t *v = load(text, &e);
    CHECK(!v && strstr(e.text, what) && e.line == line && e.column == column && e.position == position,
          "%s: '%s' at %d:%d (%d), want '%s' at %d:%d (%d)", text, e.text, e.line, e.column, e.position, what, line,
          column, position);
    json_decref(v);
}

int main(void) {
    roundtrip("{\"seed\": 18446744073709551615}", "{\"seed\": 18446744073709551615}");
    roundtrip("[9223372036854775808, 9223372036854775807, -9223372036854775808]",
              "[9223372036854775808, 9223372036854775807, -9223372036854775808]");
    roundtrip("18446744073709551615", "18446744073709551615");
    roundtrip("{\"a\": [{\"b\": 12345678901234567890}], \"c\": \"18446744073709551615\"}",
              "{\"a\": [{\"b\": 12345678901234567890}], \"c\": \"18446744073709551615\"}");
    roundtrip("[1e19, 18446744073709551615.0, 1.5]", "[1e+19, 1.8446744073709552e+19, 1.5]");
    roundtrip("\xef\xbb\xbf{\"k\": 1}", "{\"k\": 1}");

    json_error_t e;
    json_t *v = load("[18446744073709551615, 9223372036854775808]", &e);
    uint64_t u = 0;
    CHECK(v && kn_json_u64_value(json_array_get(v, 0), &u) && u == UINT64_MAX, "u64 value %llu",
          (unsigned long long)u);
    CHECK(v && kn_json_u64_value(json_array_get(v, 1), &u) && u == (uint64_t)1 << 63, "2^63 %llu",
          (unsigned long long)u);
    json_t *js = v ? kn_json_js_copy(v) : NULL;
    CHECK(js && json_is_real(json_array_get(js, 0)) && json_real_value(json_array_get(js, 0)) == 18446744073709551616.0,
          "JavaScript's copy is the nearest double");
    char *py = v ? kn_py_repr(v) : NULL;
    CHECK(py && strcmp(py, "[18446744073709551615, 9223372036854775808]") == 0, "repr %s", py ? py : "NULL");
    free(py);
    json_decref(js);
    json_decref(v);
    v = kn_json_u64(42);
    CHECK(json_is_integer(v) && json_integer_value(v) == 42, "small u64 values are plain integers");
    json_decref(v);

    /* jansson points at the last character of a bad token, Python at its first */
    refused("[18446744073709551616]", "too big integer", 1, 21, 20);
    refused("[-18446744073709551615]", "too big negative integer", 1, 22, 21);
    refused("{\"a\":\n \"x\\u0000y\"}", "\\u0000", 2, 4, 9);
    refused("{\"1\": {,}}", "expected", 1, 8, 7);
    refused("\xef\xbb\xbf{,}", "expected", 1, 3, 4);
    /* jansson quotes the bad input in its message: a stray byte there must
     * not make the message invalid UTF-8 (error bodies are JSON; found by
     * fuzz_workflow) */
    v = load("{\"a\": \"\\\xc3\xa9\"}", &e);
    int printable = 1;
    for (const char *c = e.text; *c; c++) printable &= *c >= 0x20 && *c < 0x7f;
    CHECK(!v && strstr(e.text, "invalid escape") && printable, "escape of a stray byte: '%s'", e.text);
    json_decref(v);
    printf("test_json_load: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
