/* kn_pyconv: Python's int(), float() and bool() of the values json.loads
 * makes, as ComfyUI's validation applies them to constant inputs
 * (graph/validate.h), with the exception text Python would raise.
 *
 * Contract:
 *  - kn_py_to_int / kn_py_to_float: 0 with *out a new reference to the
 *    converted value, or 1 with exc (len bytes) holding the exception's
 *    message. int() truncates reals, parses decimal strings (whitespace,
 *    sign, single underscores between digits) and takes booleans as 0/1; a
 *    whole real beyond 64 bits stays a real (Python's int is unbounded) but
 *    a string beyond 64 bits fails. float() parses the same literals with a
 *    fraction and exponent. Kiln refuses non-finite values ("inf", "nan",
 *    overflowing literals) where Python would accept them.
 *  - kn_py_truthy is bool(value); kn_py_type_name is type(value).__name__. */
#ifndef KN_GRAPH_PYCONV_H
#define KN_GRAPH_PYCONV_H

#include <stddef.h>

#include <jansson.h>

int kn_py_to_int(const json_t *v, json_t **out, char *exc, size_t len);
int kn_py_to_float(const json_t *v, json_t **out, char *exc, size_t len);
int kn_py_truthy(const json_t *v);
const char *kn_py_type_name(const json_t *v);

#endif
