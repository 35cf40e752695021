/* kn_server: a ComfyUI-compatible HTTP + WebSocket server (`kiln serve`),
 * so existing ComfyUI clients (the front end, websockets_api_example.py,
 * bots) can drive Kiln unchanged. The API is notes/comfyui-api.md; what is
 * served and what is left out is listed in web/README.md.
 *
 * Contract:
 *  - kn_server_start creates the folders (output, input, temp), opens the
 *    models root, creates the executor, the queue worker and the WebSocket
 *    hub, and starts listening on cfg->listen (comma-separated addresses,
 *    e.g. "127.0.0.1" or "0.0.0.0") at cfg->port. It returns once the
 *    server answers; failures (port in use, missing models root) return a
 *    status with err set and leave nothing running.
 *  - Every route is served at /<path> and /api/<path>. Request bodies over
 *    cfg->max_body bytes get 413; malformed JSON or multipart bodies get 400
 *    (JSON routes answer with ComfyUI's {"error": {...}, "node_errors": {}}
 *    shape); unknown routes 404; methods a route lacks 405.
 *  - Files are only ever reached through web/files.h: /view and
 *    /upload/image cannot leave the output, input and temp folders, the UI
 *    is served from cfg->ui_dir and bundled workflows from
 *    cfg->workflows_dir the same way.
 *  - Before any route or the WebSocket handshake, web/guard.h refuses
 *    requests by Host, Origin and connections per client address.
 *  - kn_server_stop stops accepting, interrupts the running prompt, joins
 *    every thread and frees everything (NULL is a no-op). */
#ifndef KN_WEB_SERVER_H
#define KN_WEB_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"
#include "kernels/ops.h"

typedef struct kn_ranks kn_ranks;

typedef struct kn_server_config {
    const char *listen;        /* addresses, comma-separated */
    int port;
    const char *models_root;
    const char *output_dir, *input_dir, *temp_dir;
    const char *ui_dir;        /* web/ui: index.html, app.js, style.css */
    const char *workflows_dir; /* served read-only at /workflows/<name>; NULL = none */
    size_t max_body;           /* bytes; ComfyUI's --max-upload-size */
    kn_precision precision;    /* of the GEMMs */
    kn_ranks *ranks;           /* borrowed: the launch's other ranks (nodes/ranks.h), or NULL */
    const char *user_dir;      /* --user-directory: /userdata, /settings (web/routes_user.h); NULL = "user" */
    const char *cors_origin;   /* --enable-cors-header: NULL = off (the loopback origin guard applies) */
    const char *preview_method; /* --preview-method (web/preview.h); NULL = "none", as ComfyUI */
    const char *allow_hosts;   /* --allow-host: Host names accepted besides loopback and --listen (web/guard.h) */
    uint64_t memory_budget;     /* --memory-budget in bytes (nodes/model_store.h); 0 = the default */
} kn_server_config;

typedef struct kn_server kn_server;

int kn_server_start(kn_server **out, const kn_server_config *cfg, kn_err *err);
void kn_server_stop(kn_server *s);

#endif
