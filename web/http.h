/* kn_http: the small request/reply layer the route files beside web/server.c
 * share (web/routes_*.c, web/view_image.c), so each group of routes lives in
 * its own file and server.c only holds one hook line per route.
 *
 * Contract:
 *  - A kn_http describes one request being answered on a civetweb
 *    connection: method, the {param} tail of a prefix route (or NULL), the
 *    query string (or NULL), the body cap and the CORS header lines to add to
 *    every reply ("" when --enable-cors-header is off).
 *  - Every kn_http_* reply writes one complete HTTP/1.1 response with
 *    Content-Length and Connection: close and returns its status code. Bodies
 *    are not written for HEAD.
 *  - Errors from these routes are JSON, {"error": "<message>"} (the shape of
 *    ComfyUI's /api/jobs and user-data errors), so JSON clients never choke on
 *    a text body.
 *  - Messages of the layers below name files by their full paths; what
 *    reaches a client names none of the server's folders: kn_http_scrub
 *    cuts every absolute path in a message to its last component
 *    ("cannot open '/srv/models/vae/x.safetensors'" -> "cannot open
 *    'x.safetensors'"). kn_http_fail answers with a scrubbed err->msg.
 *  - kn_http_body reads at most max_body bytes (NUL-terminated; free() it)
 *    and returns 0, or the status to answer (413 over the cap, 400 short). */
#ifndef KN_WEB_HTTP_H
#define KN_WEB_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "kernels/error.h"

struct mg_connection;

typedef struct kn_http {
    struct mg_connection *conn;
    const char *method;
    const char *param; /* may be NULL */
    const char *query; /* may be NULL */
    size_t max_body;
    const char *cors;  /* header lines, each ending in \r\n, or "" */
} kn_http;

int kn_http_send(const kn_http *h, int status, const char *type, const void *data, size_t len, const char *extra);
/* body is stolen; NULL (an allocation failed) answers 500. */
int kn_http_json(const kn_http *h, int status, json_t *body);
int kn_http_error(const kn_http *h, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int kn_http_body(const kn_http *h, char **out, size_t *len);
/* In place; the JSON form scrubs every string below v and returns v. */
void kn_http_scrub(char *text);
json_t *kn_http_scrub_json(json_t *v);
int kn_http_fail(const kn_http *h, int status, kn_err *err);
/* The body as JSON of any kind: 0, or the status already answered. */
int kn_http_read_json(const kn_http *h, json_t **out);
/* A query parameter: 1 found, 0 absent, -1 too long for dst. */
int kn_http_query(const kn_http *h, const char *name, char *dst, size_t len);
/* "true"/"1" as ComfyUI's query flags; absent gives def. */
bool kn_http_query_flag(const kn_http *h, const char *name, bool def);
const char *kn_http_status_text(int status);

#endif
