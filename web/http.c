/* Shared request/reply helpers of the route files: see web/http.h. */
#include "web/http.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <civetweb.h>

#include "kernels/json.h"

const char *kn_http_status_text(int status) {
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    default: return "Internal Server Error";
    }
}

int kn_http_send(const kn_http *h, int status, const char *type, const void *data, size_t len, const char *extra) {
    mg_printf(h->conn,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-cache\r\n%s%s"
              "Connection: close\r\n\r\n",
              status, kn_http_status_text(status), type, status == 204 ? (size_t)0 : len, h->cors ? h->cors : "",
              extra ? extra : "");
    if (len && status != 204 && strcmp(h->method, "HEAD") != 0) mg_write(h->conn, data, len);
    return status;
}

int kn_http_json(const kn_http *h, int status, json_t *body) {
    char *text = body ? kn_json_dumps(body, 0) : NULL;
    json_decref(body);
    if (!text) {
        static const char oom[] = "{\"error\": \"out of memory\"}";
        return kn_http_send(h, 500, "application/json; charset=utf-8", oom, sizeof oom - 1, NULL);
    }
    int rc = kn_http_send(h, status, "application/json; charset=utf-8", text, strlen(text), NULL);
    free(text);
    return rc;
}

int kn_http_error(const kn_http *h, int status, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* messages quote client bytes (paths, names); JSON strings must be UTF-8 */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20) *p = '?';
    return kn_http_json(h, status, json_pack("{s:s}", "error", msg));
}

/* A path starts at a '/' that begins a word and runs to a quote, space,
 * bracket, comma, semicolon or a ':' ending a clause. */
static bool path_start(const char *text, const char *p) {
    return *p == '/' && (p == text || strchr(" '\"(=[,", p[-1]));
}

static bool path_end(const char *p) {
    return !*p || strchr(" '\"()[],;\n\t", *p) || (*p == ':' && (!p[1] || p[1] == ' '));
}

void kn_http_scrub(char *text) {
    char *w = text;
    for (const char *p = text; *p;) {
        if (!path_start(text, p)) {
            *w++ = *p++;
            continue;
        }
        const char *end = p + 1, *last = p;
        while (!path_end(end)) {
            if (*end == '/' && !path_end(end + 1)) last = end;
            end++;
        }
        /* keep the last component of a path with two or more ("/etc" says nothing) */
        const char *keep = last == p ? p : last + 1;
        size_t n = (size_t)(end - keep);
        memmove(w, keep, n);
        w += n;
        p = end;
    }
    *w = '\0';
}

json_t *kn_http_scrub_json(json_t *v) {
    if (json_is_string(v)) {
        char *s = strdup(json_string_value(v));
        if (s) {
            kn_http_scrub(s);
            json_string_set(v, s);
            free(s);
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) kn_http_scrub_json(json_array_get(v, i));
    } else if (json_is_object(v)) {
        const char *key;
        json_t *item;
        json_object_foreach(v, key, item) kn_http_scrub_json(item);
    }
    return v;
}

int kn_http_fail(const kn_http *h, int status, kn_err *err) {
    kn_http_scrub(err->msg);
    return kn_http_error(h, status, "%s", err->msg);
}

int kn_http_body(const kn_http *h, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    const struct mg_request_info *ri = mg_get_request_info(h->conn);
    size_t cap = h->max_body;
    if (ri->content_length > 0 && (unsigned long long)ri->content_length > cap) return 413;
    size_t want = ri->content_length >= 0 ? (size_t)ri->content_length : cap + 1;
    char *buf = malloc(want + 1);
    if (!buf) return 500;
    size_t got = 0;
    while (got < want) {
        size_t ask = want - got < INT_MAX ? want - got : INT_MAX;
        int n = mg_read(h->conn, buf + got, ask);
        if (n <= 0) break;
        got += (size_t)n;
        /* With a Content-Length civetweb returns short only when its read
         * timed out or the client left: asking again would wait once more. */
        if (ri->content_length >= 0 && (size_t)n < ask) break;
    }
    if (got > cap || (ri->content_length >= 0 && got != want)) {
        free(buf);
        return got > cap ? 413 : 400;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return 0;
}

int kn_http_read_json(const kn_http *h, json_t **out) {
    *out = NULL;
    char *body;
    size_t len;
    int st = kn_http_body(h, &body, &len);
    if (st) return kn_http_error(h, st, st == 413 ? "request body too large" : "could not read the request body");
    json_error_t jerr;
    *out = kn_json_loadb(body, len, &jerr);
    free(body);
    if (!*out) return kn_http_error(h, 400, "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    return 0;
}

int kn_http_query(const kn_http *h, const char *name, char *dst, size_t len) {
    dst[0] = '\0';
    if (!h->query) return 0;
    int n = mg_get_var(h->query, strlen(h->query), name, dst, len);
    return n >= 0 ? 1 : n == -1 ? 0 : -1;
}

bool kn_http_query_flag(const kn_http *h, const char *name, bool def) {
    char v[16];
    if (kn_http_query(h, name, v, sizeof v) != 1) return def;
    return strcmp(v, "true") == 0 || strcmp(v, "1") == 0;
}
