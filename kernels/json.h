/* kn_json: JSON text and value helpers shared by the workflow, validation and
 * node-schema code, so that what Kiln prints is what ComfyUI (Python) or its
 * front end (JavaScript) would print.
 *
 * Contract:
 *  - kn_json_dumps writes any jansson value as JSON with reals in their
 *    shortest round-trip form, spelled as Python's repr does ("0.1", "8.0",
 *    "1e-05"), where jansson's own dumper prints 17 digits ("0.10000000000000001").
 *    Object keys keep insertion order. indent 0 = one line with Python's
 *    default separators (", " and ": "); indent > 0 = that many spaces per
 *    level, like json.dumps(indent=n). Returns a malloc'd string or NULL when
 *    out of memory.
 *  - kn_py_json_dumps is Python's json.dumps(v) with its defaults: one line,
 *    ensure_ascii (every character outside ' '..'~' written as \uXXXX), as
 *    ComfyUI writes the prompt into PNG chunks and .latent metadata.
 *  - kn_py_float formats a double like Python's repr(float).
 *  - kn_py_str / kn_py_repr format a JSON value as Python's str() / repr()
 *    of the value json.loads would give (None, True, 'text', [1, 2.5],
 *    {'k': 'v'}): ComfyUI builds its error details with them. Strings are
 *    escaped as repr does for ASCII and C1 control characters; other
 *    non-printable Unicode is copied through. malloc'd, NULL when out of memory.
 *  - kn_json_js_copy deep-copies a value with every number turned into what
 *    a JavaScript front end would send for it after JSON.parse + stringify:
 *    integral reals become integers (1.0 -> 1), integers beyond 2^53 are
 *    rounded to the nearest double. New reference, NULL when out of memory.
 *  - Recursion follows the value's nesting, which jansson's parser caps at
 *    2048 levels for anything loaded from text.
 *  - kn_json_loadb parses text as Python's json.loads(bytes) reads a prompt
 *    (kernels/json_load.c): any value at the top, a leading UTF-8 BOM
 *    skipped, and integers from 2^63 to 2^64 - 1 (ComfyUI's seeds; jansson
 *    refuses them) kept exactly as u64 values. "\u0000" in a string is
 *    refused (Python accepts it; C strings would cut it short). NULL with e
 *    set (line, column in characters, byte position, message) on failure;
 *    kn_json_error_text formats e as Python's JSONDecodeError does
 *    ("<message>: line L column C (char P)").
 *  - A u64 value beyond INT64_MAX is a jansson string that no parsed text
 *    can hold ("\0u64:" and the digits): kn_json_u64 makes one (a plain
 *    integer up to INT64_MAX), kn_json_u64_value reads one, and the dumpers
 *    above print it as the number it is (JavaScript's copy rounds it to a
 *    double, as JSON.parse would). */
#ifndef KN_KERNELS_JSON_H
#define KN_KERNELS_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

char *kn_json_dumps(const json_t *v, int indent);
char *kn_py_json_dumps(const json_t *v);
void kn_py_float(double d, char *buf, size_t len);
char *kn_py_str(const json_t *v);
char *kn_py_repr(const json_t *v);
json_t *kn_json_js_copy(const json_t *v);

json_t *kn_json_loadb(const char *buf, size_t len, json_error_t *e);
void kn_json_error_text(const json_error_t *e, char *buf, size_t len);
json_t *kn_json_u64(uint64_t v);
int kn_json_u64_value(const json_t *v, uint64_t *out); /* 1 when v is a u64 value beyond INT64_MAX */
const char *kn_json_u64_digits(const json_t *v);      /* its digits, else NULL */

#endif
