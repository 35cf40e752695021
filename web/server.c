/* The HTTP side of `kiln serve`: route table and handlers. See web/server.h. */
#include "web/server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <civetweb.h>

#include "graph/executor.h"
#include "kernels/json.h"
#include "graph/validate.h"
#include "nodes/registry.h"
#include "nodes/model_store.h"
#include "web/files.h"
#include "web/guard.h"
#include "web/http.h"
#include "web/images.h"
#include "web/multipart.h"
#include "web/prompt_request.h"
#include "web/queue.h"
#include "web/routes_convert.h"
#include "web/routes_jobs.h"
#include "web/routes_models.h"
#include "web/routes_user.h"
#include "web/stack.h"
#include "web/ws.h"

/* Every WebSocket holds a worker; KN_SERVER_HTTP_WORKERS are left for requests. */
#define KN_SERVER_HTTP_WORKERS 128
#define KN_SERVER_THREADS (KN_WS_MAX_CLIENTS + KN_SERVER_HTTP_WORKERS)
#define KN_SERVER_TIMEOUT_MS "10000"
#define KN_QUERY_VALUE_MAX 4096

struct kn_server {
    size_t max_body;
    char *listen, *models_root, *output_dir, *input_dir, *temp_dir, *ui_dir, *workflows_dir, *user_dir;
    char cors[512]; /* --enable-cors-header's lines for every reply, "" when off */
    kn_models *models;
    kn_executor *ex;
    kn_ws_hub *hub;
    kn_queue *queue;
    kn_guard *guard;
    struct mg_context *ctx;
};

/* One request as the handlers see it. */
typedef struct request {
    struct mg_connection *conn;
    kn_server *s;
    const char *method;
    const char *path;  /* without the /api prefix */
    const char *param; /* the {param} tail of a prefix route, else NULL */
    const char *query; /* may be NULL */
} request;

/* The request as the route files beside this one take it (web/http.h). */
static kn_http http_of(const request *r) {
    return (kn_http){r->conn, r->method, r->param, r->query, r->s->max_body, r->s->cors};
}

/* ---- responses ------------------------------------------------------------------- */

static const char *status_text(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    default: return "Internal Server Error";
    }
}

static int send_bytes(request *r, int status, const char *type, const void *data, size_t len, const char *extra) {
    mg_printf(r->conn,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-cache\r\n%s%s"
              "Connection: close\r\n\r\n",
              status, status_text(status), type, len, r->s->cors, extra ? extra : "");
    if (len && strcmp(r->method, "HEAD") != 0) mg_write(r->conn, data, len);
    return status;
}

static int send_text(request *r, int status, const char *text) {
    return send_bytes(r, status, "text/plain; charset=utf-8", text, strlen(text), NULL);
}

/* body is stolen; NULL means an allocation failed. */
static int send_json(request *r, int status, json_t *body) {
    char *text = body ? kn_json_dumps(body, 0) : NULL;
    json_decref(body);
    if (!text) return send_text(r, 500, "500: out of memory");
    int rc = send_bytes(r, status, "application/json; charset=utf-8", text, strlen(text), NULL);
    free(text);
    return rc;
}

/* ComfyUI's 400 body for a request it could not take. */
static int send_bad_request(request *r, const char *details) {
    return send_json(r, 400, kn_http_scrub_json(kn_prompt_error_body("invalid_prompt", "Invalid prompt", details, NULL)));
}

/* ComfyUI answers these with an empty body; "{}" reads the same to every
 * client that ignores the body and lets those that parse every reply as
 * JSON (comfy-ui-client's interrupt and editHistory) succeed. */
static int send_empty(request *r) { return send_bytes(r, 200, "application/json; charset=utf-8", "{}", 2, NULL); }

/* Streams an open file (closed here). */
static int send_file(request *r, int fd, size_t size, const char *type, const char *name) {
    char extra[512] = "";
    if (name) { /* quotes and backslashes would end the header value early */
        char safe[300];
        size_t n = 0;
        for (const char *p = name; *p && n < sizeof safe - 1; p++) safe[n++] = *p == '"' || *p == '\\' ? '_' : *p;
        safe[n] = '\0';
        snprintf(extra, sizeof extra, "Content-Disposition: filename=\"%s\"\r\n", safe);
    }
    mg_printf(r->conn,
              "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-cache\r\n%s%s"
              "Connection: close\r\n\r\n",
              type, size, r->s->cors, extra);
    char buf[65536];
    for (size_t sent = 0; sent < size && strcmp(r->method, "HEAD") != 0;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || mg_write(r->conn, buf, (size_t)n) <= 0) break; /* the client went away or the file shrank */
        sent += (size_t)n;
    }
    close(fd);
    return 200;
}

/* ---- request input ----------------------------------------------------------------- */

/* Reads the body (at most max_body bytes): 0, or the HTTP status to answer. */
static int read_body(request *r, char **out, size_t *len) {
    kn_http h = http_of(r);
    return kn_http_body(&h, out, len);
}

/* The body as a JSON value: 0, or the status already answered. */
static int read_json(request *r, json_t **out) {
    *out = NULL;
    char *body;
    size_t len;
    int st = read_body(r, &body, &len);
    if (st == 413) return send_text(r, 413, "413: request body too large");
    if (st) return send_bad_request(r, "could not read the request body");
    json_error_t jerr;
    *out = kn_json_loadb(body, len, &jerr);
    free(body);
    if (!*out) {
        char details[256];
        snprintf(details, sizeof details, "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
        return send_bad_request(r, details);
    }
    return 0;
}

/* A query parameter: 1 found, 0 absent, -1 too long. */
static int query_var(const request *r, const char *name, char *dst, size_t len) {
    dst[0] = '\0';
    if (!r->query) return 0;
    int n = mg_get_var(r->query, strlen(r->query), name, dst, len);
    return n >= 0 ? 1 : n == -1 ? 0 : -1;
}

static int query_long(const request *r, const char *name, long *out, bool *bad) {
    char v[64];
    int found = query_var(r, name, v, sizeof v);
    if (found < 0) *bad = true;
    if (found <= 0) return 0;
    char *end;
    errno = 0;
    *out = strtol(v, &end, 10);
    if (errno || end == v || *end) *bad = true;
    return 1;
}

/* ---- folders ----------------------------------------------------------------------- */

/* The folder of an output/input/temp type name, or NULL. */
static const char *type_dir(const kn_server *s, const char *type) {
    return strcmp(type, "output") == 0 ? s->output_dir
           : strcmp(type, "input") == 0 ? s->input_dir
           : strcmp(type, "temp") == 0  ? s->temp_dir
                                        : NULL;
}

static const char *mime_type(const char *name) {
    static const struct {
        const char *ext, *type;
    } types[] = {{".png", "image/png"},   {".jpg", "image/jpeg"},       {".jpeg", "image/jpeg"},
                 {".webp", "image/webp"}, {".gif", "image/gif"},        {".bmp", "image/bmp"},
                 {".json", "application/json"}, {".txt", "text/plain"}, {".svg", "image/svg+xml"}};
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcasecmp(dot, types[i].ext) == 0) return types[i].type;
    return "application/octet-stream"; /* also html/js/css from user folders: never rendered as a page */
}

static int send_static(request *r, const char *dir, const char *name, const char *type) {
    int fd;
    size_t size;
    kn_err err;
    if (!dir || kn_web_open_file(dir, "", name, &fd, &size, &err)) {
        kn_http h = http_of(r);
        return kn_http_error(&h, 404, "no such file '%s'", name);
    }
    return send_file(r, fd, size, type, NULL);
}

/* ---- handlers: queueing ------------------------------------------------------------------ */

static int h_post_prompt(request *r) {
    char *text;
    size_t len;
    int st = read_body(r, &text, &len);
    if (st == 413) return send_text(r, 413, "413: request body too large");
    if (st) return send_bad_request(r, "could not read the request body");
    kn_folder_lister lister = kn_models_lister(r->s->models);
    kn_node_env env = kn_executor_env(r->s->ex);
    kn_prompt_request req;
    kn_validation v = {0};
    kn_err err;
    kn_err_clear(&err);
    json_t *reply = NULL;
    int rc = kn_prompt_request_parse(text, len, &lister, &req, &reply, &err);
    free(text);
    kn_http_scrub(err.msg);
    if (rc) {
        st = reply ? send_json(r, 400, kn_http_scrub_json(reply)) : send_text(r, 500, "500: out of memory");
    } else if (kn_validate_prompt(req.prompt, req.targets, &lister, &env, &v, &err)) {
        kn_http_scrub(err.msg);
        st = v.error ? send_json(r, 400, kn_http_scrub_json(kn_validation_body(&v))) : send_text(r, 500, err.msg);
    } else if (kn_queue_push(r->s->queue, req.id, req.prompt, &v, req.extra, req.number, req.front, &reply, &err)) {
        st = send_bad_request(r, err.msg);
    } else {
        req.prompt = req.extra = NULL; /* the queue owns them */
        st = send_json(r, 200, reply);
    }
    kn_validation_free(&v);
    kn_prompt_request_free(&req);
    return st;
}

static int h_get_prompt(request *r) {
    return send_json(r, 200, json_pack("{s:{s:i}}", "exec_info", "queue_remaining", kn_queue_remaining(r->s->queue)));
}

static int h_get_queue(request *r) { return send_json(r, 200, kn_queue_state(r->s->queue)); }

/* The {"clear": bool, "delete": [ids]} body of POST /queue and /history. */
static int read_drop_request(request *r, json_t **body, bool *clear, const json_t **ids) {
    int st = read_json(r, body);
    if (st) return st;
    *clear = json_is_true(json_object_get(*body, "clear"));
    *ids = json_object_get(*body, "delete");
    if (!json_is_object(*body) || (*ids && !json_is_array(*ids))) {
        json_decref(*body);
        *body = NULL;
        return send_bad_request(r, "expected {\"clear\": true} and/or {\"delete\": [prompt ids]}");
    }
    return 0;
}

static int h_post_queue(request *r) {
    json_t *body;
    bool clear;
    const json_t *ids;
    int st = read_drop_request(r, &body, &clear, &ids);
    if (st) return st;
    kn_queue_drop(r->s->queue, clear, ids);
    json_decref(body);
    return send_empty(r);
}

static int h_get_history(request *r) {
    long max_items = -1, offset = -1;
    bool bad = false;
    query_long(r, "max_items", &max_items, &bad);
    query_long(r, "offset", &offset, &bad);
    if (bad) return send_bad_request(r, "max_items and offset must be integers");
    return send_json(r, 200, kn_queue_history(r->s->queue, r->param, r->param ? -1 : max_items, offset));
}

static int h_post_history(request *r) {
    json_t *body;
    bool clear;
    const json_t *ids;
    int st = read_drop_request(r, &body, &clear, &ids);
    if (st) return st;
    kn_queue_history_drop(r->s->queue, clear, ids);
    json_decref(body);
    return send_empty(r);
}

static int h_interrupt(request *r) {
    char *body;
    size_t len;
    int st = read_body(r, &body, &len);
    if (st == 413) return send_text(r, 413, "413: request body too large");
    json_t *doc = st ? NULL : json_loadb(body, len, 0, NULL);
    free(body);
    /* Any body that does not name a prompt (none, non-JSON) interrupts whatever runs, as ComfyUI. */
    kn_queue_interrupt(r->s->queue, json_string_value(json_object_get(doc, "prompt_id")));
    json_decref(doc);
    return send_empty(r);
}

/* POST /free: ComfyUI's flags, done by the queue's worker after the running
 * prompt (kn_queue_free_memory); unload_models defaults to free_memory. */
static int h_free(request *r) {
    json_t *body;
    int st = read_json(r, &body);
    if (st) return st;
    bool object = json_is_object(body);
    bool mem = json_is_true(json_object_get(body, "free_memory"));
    const json_t *unload = json_object_get(body, "unload_models");
    if (object) kn_queue_free_memory(r->s->queue, unload ? json_is_true(unload) : mem, mem);
    json_decref(body);
    return object ? send_empty(r) : send_bad_request(r, "expected {\"unload_models\": bool, \"free_memory\": bool}");
}

/* ---- handlers: files ------------------------------------------------------------------- */

static int h_view(request *r) {
    char filename[KN_QUERY_VALUE_MAX], type[64], subfolder[KN_QUERY_VALUE_MAX];
    int f = query_var(r, "filename", filename, sizeof filename);
    if (f == 0) return send_text(r, 404, "404: Not Found");
    int t = query_var(r, "type", type, sizeof type);
    int sf = query_var(r, "subfolder", subfolder, sizeof subfolder);
    if (f < 0 || t < 0 || sf < 0) return send_text(r, 400, "400: parameter too long");
    if (t == 0) strcpy(type, "output");
    /* "name.png [output]": the annotation names the folder. */
    static const char *const annotations[] = {"output", "input", "temp"};
    size_t flen = strlen(filename);
    for (int i = 0; i < 3; i++) {
        char suffix[16];
        size_t n = (size_t)snprintf(suffix, sizeof suffix, " [%s]", annotations[i]);
        if (flen >= n && strcmp(filename + flen - n, suffix) == 0) {
            filename[flen - n] = '\0';
            strcpy(type, annotations[i]);
            break;
        }
    }
    const char *dir = type_dir(r->s, type);
    if (!dir) return send_text(r, 400, "400: unknown type");
    if (!filename[0] || filename[0] == '/' || strstr(filename, "..")) return send_text(r, 400, "400: invalid filename");
    if (!kn_web_subfolder_ok(subfolder)) return send_text(r, 403, "403: Forbidden");
    const char *base = strrchr(filename, '/');
    base = base ? base + 1 : filename;
    if (!kn_web_name_ok(base)) return send_text(r, 400, "400: invalid filename");
    int fd;
    size_t size;
    kn_err err;
    int rc = kn_web_open_file(dir, subfolder, base, &fd, &size, &err);
    if (rc == KN_ERR_INVALID) return send_text(r, 400, "400: invalid filename");
    if (rc) return send_text(r, 404, "404: Not Found");
    char preview[64], channel[16];
    int pv = query_var(r, "preview", preview, sizeof preview), ch = query_var(r, "channel", channel, sizeof channel);
    if (pv > 0 || (ch > 0 && strcmp(channel, "rgba") != 0)) { /* re-encoded: web/images.h */
        kn_http h = http_of(r);
        return kn_view_transformed(&h, fd, size, pv > 0 ? preview : NULL, ch > 0 ? channel : NULL);
    }
    return send_file(r, fd, size, mime_type(base), base);
}

static int h_upload_image(request *r) {
    char *body;
    size_t len;
    int st = read_body(r, &body, &len);
    if (st == 413) return send_text(r, 413, "413: request body too large");
    if (st) return send_text(r, 400, "400: could not read the request body");
    kn_multipart *mp = NULL;
    kn_err err;
    kn_err_clear(&err);
    if (kn_multipart_parse(mg_get_header(r->conn, "Content-Type"), body, len, &mp, &err)) {
        free(body);
        return send_text(r, 400, "400: malformed multipart body");
    }
    const kn_multipart_part *image = kn_multipart_get(mp, "image");
    const kn_multipart_part *ow = kn_multipart_get(mp, "overwrite");
    const kn_multipart_part *sub = kn_multipart_get(mp, "subfolder");
    const kn_multipart_part *typ = kn_multipart_get(mp, "type");
    char type[64] = "input", subfolder[KN_MULTIPART_MAX_NAME] = "", stored[512];
    bool overwrite = ow && ((ow->len == 4 && memcmp(ow->data, "true", 4) == 0) || (ow->len == 1 && ow->data[0] == '1'));
    if (typ && typ->len > 0 && typ->len < sizeof type) snprintf(type, sizeof type, "%.*s", (int)typ->len, typ->data);
    if (sub && sub->len < sizeof subfolder) snprintf(subfolder, sizeof subfolder, "%.*s", (int)sub->len, sub->data);
    const char *dir = type_dir(r->s, type);
    if (!dir) dir = r->s->input_dir; /* ComfyUI stores unknown types in input/ and echoes the type */
    if (!image || !image->filename || !image->filename[0] || (typ && typ->len >= sizeof type) ||
        (sub && (sub->len >= sizeof subfolder || memchr(sub->data, '\0', sub->len))) || !kn_web_subfolder_ok(subfolder) ||
        !kn_web_name_ok(image->filename)) {
        st = send_text(r, 400, "400: Bad Request");
    } else if (kn_web_store_upload(dir, subfolder, image->filename, image->data, image->len, overwrite, stored,
                                   sizeof stored, &err)) {
        bool refused = err.code == KN_ERR_INVALID || err.code == KN_ERR_NOT_FOUND; /* a name or a symlink */
        st = send_text(r, refused ? 400 : 500, refused ? "400: Bad Request" : "500: upload failed");
    } else {
        st = send_json(r, 200, json_pack("{s:s, s:s, s:s}", "name", stored, "subfolder", subfolder, "type", type));
    }
    free(mp);
    free(body);
    return st;
}

/* ---- handlers: information ---------------------------------------------------------------- */

/* Only the classes Kiln runs: the front end offers what is listed. */
static int h_object_info(request *r) {
    kn_folder_lister lister = kn_models_lister(r->s->models);
    kn_err err;
    json_t *all = kn_node_object_info(r->param, &lister, &err);
    if (all) return send_json(r, 200, all);
    kn_http_scrub(err.msg);
    return send_text(r, 500, err.msg);
}

/* The model folders of runtime/models.h, as GET /models lists them. */
static const char *const model_folders[] = {"checkpoints", "diffusion_models", "loras", "text_encoders", "vae"};

static int h_models(request *r) {
    if (!r->param) {
        json_t *list = json_array();
        for (size_t i = 0; i < sizeof model_folders / sizeof model_folders[0]; i++)
            json_array_append_new(list, json_string(model_folders[i]));
        return send_json(r, 200, list);
    }
    bool known = false;
    for (size_t i = 0; i < sizeof model_folders / sizeof model_folders[0]; i++) known |= strcmp(r->param, model_folders[i]) == 0;
    if (!known) {
        kn_http h = http_of(r);
        return kn_http_error(&h, 404, "unknown model folder '%s'", r->param);
    }
    json_t *names = json_array();
    kn_err err;
    if (!names || kn_models_list(r->s->models, r->param, names, &err)) {
        json_decref(names);
        return send_text(r, 500, "500: cannot list the folder");
    }
    return send_json(r, 200, names);
}

static int h_system_stats(request *r) {
    struct sysinfo si;
    json_int_t total = 0, avail = 0;
    if (sysinfo(&si) == 0) {
        total = (json_int_t)si.totalram * si.mem_unit;
        avail = (json_int_t)(si.freeram + si.bufferram) * si.mem_unit;
    }
    return send_json(r, 200, json_pack("{s:{s:s, s:I, s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:[s, s]},"
                                       " s:[{s:s, s:s, s:i, s:I, s:I, s:i, s:i}]}",
                                       "system", "os", "linux", "ram_total", total, "ram_free", avail,
                                       "comfyui_version", "0.3.75", "kiln_version", "0.1",
                                       "required_frontend_version", "", "python_version", "", "pytorch_version", "",
                                       "installed_templates_version", "", "embedded_python", 0, "argv", "kiln", "serve",
                                       "devices", "name", "cpu", "type", "cpu", "index", 0, "vram_total", total,
                                       "vram_free", avail, "torch_vram_total", 0, "torch_vram_free", 0));
}

static int h_empty_list(request *r) { return send_json(r, 200, json_array()); }
static int h_empty_object(request *r) { return send_json(r, 200, json_object()); }
static int h_features(request *r) { return send_json(r, 200, kn_ws_features(r->s->max_body)); }
static int h_users(request *r) { return send_json(r, 200, json_pack("{s:s, s:b}", "storage", "server", "migrated", 1)); }


static int h_workflow_file(request *r) { return send_static(r, r->s->workflows_dir, r->param, "application/json"); }

/* Routes that live in their own files (web/routes_*.c, web/images.c). */
static int h_upload_mask(request *r) {
    kn_http h = http_of(r);
    return kn_route_upload_mask(&h, r->s->output_dir, r->s->input_dir, r->s->temp_dir);
}
static int h_userdata(request *r) {
    kn_http h = http_of(r);
    return kn_route_userdata(&h, r->s->user_dir);
}
static int h_settings(request *r) {
    kn_http h = http_of(r);
    return kn_route_settings(&h, r->s->user_dir);
}
static int h_view_metadata(request *r) {
    kn_http h = http_of(r);
    return kn_route_view_metadata(&h, r->s->models);
}
static int h_experiment_models(request *r) {
    kn_http h = http_of(r);
    return kn_route_experiment_models(&h, r->s->models);
}
static int h_convert(request *r) {
    kn_http h = http_of(r);
    return kn_route_convert(&h, r->s->models);
}
static int h_jobs(request *r) {
    kn_http h = http_of(r);
    return kn_route_jobs(&h, r->s->queue);
}
/* The graph editor's library, from the npm install of tools/setup.sh (web/README.md). */
static int h_vendor(request *r) {
    static const struct {
        const char *name, *type;
    } files[] = {{"litegraph.es.js", "text/javascript; charset=utf-8"}, {"litegraph.css", "text/css; charset=utf-8"}};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (strcmp(r->param, files[i].name) != 0) continue;
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/../node_modules/@comfyorg/litegraph/dist%s", r->s->ui_dir,
                 strcmp(files[i].name, "litegraph.css") == 0 ? "/css" : "");
        return send_static(r, dir, files[i].name, files[i].type);
    }
    kn_http h = http_of(r);
    return kn_http_error(&h, 404, "not found");
}

/* ---- routing ------------------------------------------------------------------------------ */

typedef int (*route_fn)(request *r);

/* ComfyUI's routes (notes/comfyui-api.md §1). A route with `param` also
 * matches "<path>/<anything>" and hands the tail to the handler. */
static const struct route {
    const char *method, *path;
    bool param;
    route_fn fn;
} routes[] = {
    {"POST", "/prompt", false, h_post_prompt},
    {"GET", "/prompt", false, h_get_prompt},
    {"GET", "/queue", false, h_get_queue},
    {"POST", "/queue", false, h_post_queue},
    {"GET", "/history", false, h_get_history},
    {"GET", "/history", true, h_get_history},
    {"POST", "/history", false, h_post_history},
    {"POST", "/interrupt", false, h_interrupt},
    {"POST", "/free", false, h_free},
    {"GET", "/view", false, h_view},
    {"POST", "/upload/image", false, h_upload_image},
    {"GET", "/object_info", false, h_object_info},
    {"GET", "/object_info", true, h_object_info},
    {"GET", "/system_stats", false, h_system_stats},
    {"GET", "/models", false, h_models},
    {"GET", "/models", true, h_models},
    {"GET", "/embeddings", false, h_empty_list},
    {"GET", "/extensions", false, h_empty_list},
    {"GET", "/features", false, h_features},
    {"GET", "/users", false, h_users},
    {"GET", "/settings", false, h_settings},
    {"POST", "/settings", false, h_settings},
    {"GET", "/settings", true, h_settings},
    {"POST", "/settings", true, h_settings},
    {"GET", "/userdata", false, h_userdata},
    {"GET", "/userdata", true, h_userdata},
    {"POST", "/userdata", true, h_userdata},
    {"DELETE", "/userdata", true, h_userdata},
    {"POST", "/upload/mask", false, h_upload_mask},
    {"GET", "/view_metadata", true, h_view_metadata},
    {"GET", "/experiment/models", false, h_experiment_models},
    {"GET", "/experiment/models", true, h_experiment_models},
    {"GET", "/jobs", false, h_jobs},
    {"GET", "/jobs", true, h_jobs},
    {"GET", "/vendor", true, h_vendor},
    {"POST", "/kiln/convert", false, h_convert},
    {"GET", "/i18n", false, h_empty_object},
    {"GET", "/workflows", true, h_workflow_file},
};

static int route(struct mg_connection *conn, kn_server *s) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    request r = {conn, s, ri->request_method, ri->local_uri_raw ? ri->local_uri_raw : "/", NULL, ri->query_string};
    if (strcmp(r.method, "OPTIONS") == 0) return send_empty(&r);
    if (strncmp(r.path, "/api/", 5) == 0) r.path += 4;
    bool path_known = false;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const struct route *rt = &routes[i];
        size_t n = strlen(rt->path);
        if (strncmp(r.path, rt->path, n) != 0) continue;
        const char *tail = r.path + n;
        if (rt->param ? !(tail[0] == '/' && tail[1]) : tail[0] != '\0') continue;
        path_known = true;
        bool head = strcmp(r.method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0;
        if (strcmp(r.method, rt->method) != 0 && !head) continue;
        r.param = rt->param ? tail + 1 : NULL;
        return rt->fn(&r);
    }
    kn_http h = http_of(&r);
    if (path_known) return kn_http_error(&h, 405, "%s is not allowed on %s", r.method, r.path);
    bool get = strcmp(r.method, "GET") == 0 || strcmp(r.method, "HEAD") == 0;
    /* The UI: "/" is index.html, other top-level names are its files. */
    if (get && strcmp(r.path, "/") == 0) return send_static(&r, s->ui_dir, "index.html", "text/html; charset=utf-8");
    if (get && kn_web_name_ok(r.path + 1)) {
        const char *dot = strrchr(r.path, '.');
        const char *type = !dot                        ? "application/octet-stream"
                           : strcmp(dot, ".js") == 0   ? "text/javascript; charset=utf-8"
                           : strcmp(dot, ".css") == 0  ? "text/css; charset=utf-8"
                           : strcmp(dot, ".html") == 0 ? "text/html; charset=utf-8"
                                                       : mime_type(r.path);
        return send_static(&r, s->ui_dir, r.path + 1, type);
    }
    /* JSON, so a client that parses every reply (comfy-ui-client) gets an error it can show */
    return kn_http_error(&h, 404, "no route %s %s", r.method, r.path);
}

typedef struct dispatch_call {
    struct mg_connection *conn;
    kn_server *s;
    int status;
} dispatch_call;

static void dispatch_on_stack(void *arg) {
    dispatch_call *d = arg;
    d->status = route(d->conn, d->s);
}

/* civetweb's entry for every request: see web/stack.h for the extra thread. */
static int dispatch(struct mg_connection *conn, void *user) {
    dispatch_call d = {conn, user, 0};
    kn_err err;
    if (kn_web_on_stack(dispatch_on_stack, &d, &err)) {
        mg_printf(conn, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return 503;
    }
    return d.status;
}

/* ---- life cycle ------------------------------------------------------------------------------ */

static int log_message(const struct mg_connection *conn, const char *message) {
    (void)conn;
    (void)message;
    return 1; /* civetweb logs every dropped client to stderr otherwise */
}

/* The hub is created before the queue; no socket connects before mg_start,
 * which comes after both. */
static int hub_remaining(void *user) {
    kn_server *s = user;
    return s->queue ? kn_queue_remaining(s->queue) : 0;
}

static char *dup_or_null(const char *s, bool *oom) {
    char *d = s ? strdup(s) : NULL;
    if (s && !d) *oom = true;
    return d;
}

int kn_server_start(kn_server **out, const kn_server_config *cfg, kn_err *err) {
    *out = NULL;
    static int library_ready;
    if (!library_ready) { /* once per process; only the main thread starts servers */
        mg_init_library(MG_FEATURES_WEBSOCKET);
        library_ready = 1;
    }
    kn_server *s = calloc(1, sizeof *s);
    if (!s) return kn_fail(err, KN_ERR_NOMEM, "server: out of memory");
    bool oom = false;
    s->max_body = cfg->max_body;
    s->listen = dup_or_null(cfg->listen, &oom);
    s->models_root = dup_or_null(cfg->models_root, &oom);
    s->output_dir = dup_or_null(cfg->output_dir, &oom);
    s->input_dir = dup_or_null(cfg->input_dir, &oom);
    s->temp_dir = dup_or_null(cfg->temp_dir, &oom);
    s->ui_dir = dup_or_null(cfg->ui_dir, &oom);
    s->workflows_dir = dup_or_null(cfg->workflows_dir, &oom);
    s->user_dir = dup_or_null(cfg->user_dir ? cfg->user_dir : "user", &oom);
    if (cfg->cors_origin) /* ComfyUI's middleware headers */
        snprintf(s->cors, sizeof s->cors,
                 "Access-Control-Allow-Origin: %s\r\nAccess-Control-Allow-Methods: POST, GET, DELETE, PUT, OPTIONS, PATCH\r\n"
                 "Access-Control-Allow-Headers: Content-Type, Authorization\r\nAccess-Control-Allow-Credentials: true\r\n",
                 cfg->cors_origin);
    kn_preview_method preview = KN_PREVIEW_NONE;
    if (cfg->preview_method && kn_preview_method_parse(cfg->preview_method, &preview)) preview = KN_PREVIEW_NONE; /* serve.c checks it */
    int rc = oom ? kn_fail(err, KN_ERR_NOMEM, "server: out of memory") : KN_OK;
    const char *dirs[] = {s->output_dir, s->input_dir, s->temp_dir};
    for (int i = 0; !rc && i < 3; i++)
        if (mkdir(dirs[i], 0755) != 0 && errno != EEXIST)
            rc = kn_fail(err, KN_ERR_IO, "cannot create folder '%s': %s", dirs[i], strerror(errno));
    if (!rc) rc = kn_models_new(&s->models, s->models_root, s->input_dir, err);
    if (!rc) kn_models_set_budget(s->models, cfg->memory_budget);
    if (!rc) {
        kn_executor_config ec = {s->models, s->output_dir, s->temp_dir, s->input_dir, cfg->precision, cfg->ranks};
        rc = kn_executor_new(&s->ex, &ec, err);
    }
    if (!rc) rc = kn_guard_new(&s->guard, s->listen, cfg->port, cfg->allow_hosts, !cfg->cors_origin, err);
    if (!rc) rc = kn_ws_hub_new(&s->hub, hub_remaining, s, s->max_body, err);
    if (!rc) rc = kn_queue_new(&s->queue, s->ex, s->hub, err);
    if (!rc) kn_queue_set_preview(s->queue, preview);
    if (!rc) {
        /* civetweb wants "addr:port,addr:port". */
        char ports[1024] = "";
        size_t used = 0;
        for (const char *p = s->listen; *p && used < sizeof ports;) {
            size_t n = strcspn(p, ",");
            used += (size_t)snprintf(ports + used, sizeof ports - used, "%s%.*s:%d", used ? "," : "", (int)n, p,
                                     cfg->port);
            p += n + (p[n] == ',');
        }
        /* Request headers and each body read get KN_SERVER_TIMEOUT_MS;
         * civetweb's own CORS answers are off (Kiln's guard decides, web/guard.h). */
        char threads[16];
        snprintf(threads, sizeof threads, "%d", KN_SERVER_THREADS);
        const char *options[] = {"listening_ports", ports, "num_threads", threads, "request_timeout_ms",
                                 KN_SERVER_TIMEOUT_MS, "enable_keep_alive", "no", "access_control_allow_origin", "",
                                 "access_control_allow_methods", "", "access_control_allow_headers", "", NULL};
        struct mg_callbacks cb;
        memset(&cb, 0, sizeof cb);
        cb.log_message = log_message;
        kn_guard_hooks(&cb);
        s->ctx = mg_start(&cb, s->guard, options);
        if (!s->ctx) rc = kn_fail(err, KN_ERR_IO, "cannot listen on %s (address in use?)", ports);
    }
    if (rc) {
        kn_server_stop(s);
        return rc;
    }
    mg_set_request_handler(s->ctx, "/", dispatch, s);
    kn_ws_hub_attach(s->hub, s->ctx);
    *out = s;
    return KN_OK;
}

void kn_server_stop(kn_server *s) {
    if (!s) return;
    /* Worker first: it writes to WebSockets that mg_stop closes. Then
     * civetweb, after which no handler touches the queue. */
    if (s->queue) kn_queue_stop(s->queue);
    if (s->ctx) mg_stop(s->ctx);
    kn_queue_free(s->queue);
    kn_ws_hub_free(s->hub);
    kn_guard_free(s->guard);
    kn_executor_free(s->ex);
    kn_models_free(s->models);
    free(s->listen);
    free(s->models_root);
    free(s->output_dir);
    free(s->input_dir);
    free(s->temp_dir);
    free(s->ui_dir);
    free(s->workflows_dir);
    free(s->user_dir);
    free(s);
}
