/* kn_ws_hub: the server's WebSocket clients (/ws?clientId=...) and message
 * delivery as ComfyUI's PromptServer.send_sync does (notes/comfyui-api.md §4).
 *
 * Contract:
 *  - kn_ws_hub_attach registers /ws and /api/ws on a civetweb context. On
 *    connect a socket gets its sid (clientId, or 32 random hex digits when
 *    absent or unusable) and immediately {"type": "status", "data":
 *    {"status": {"exec_info": {"queue_remaining": N}}, "sid": sid}}, N from
 *    the `remaining` callback. A newer socket with the same sid takes over
 *    the sid's messages. At most KN_WS_MAX_CLIENTS sockets; more are refused.
 *  - Client frames are ignored except a first text frame of type
 *    "feature_flags", which is answered with the server's feature flags;
 *    garbage, binary and oversized frames never close anything but the
 *    socket that sent them.
 *  - kn_ws_send delivers one JSON message {"type", "data"} to the socket of
 *    `sid`, or to every socket when sid is NULL; a sid without a socket drops
 *    it. It only queues: each socket has its own bounded queue and writer
 *    thread, so a client that reads slowly or not at all delays nobody else
 *    (not the render, not other sockets). A socket with more than
 *    KN_WS_QUEUE_MAX bytes unsent, or whose write failed or timed out, is
 *    dropped: its backlog is discarded, it gets a close frame (1008) and
 *    nothing more, and civetweb closes it at its next frame or disconnect.
 *  - Threads: civetweb's connection threads and the queue worker call in
 *    concurrently. The hub's own mutex guards the socket table and the
 *    queues and is never held across a write or while calling out of this
 *    module (lock order: the queue's mutex is never taken under it). A
 *    socket's writer is joined in civetweb's close callback, so nothing
 *    writes to a connection civetweb closed.
 *  - kn_ws_hub_free: call after the civetweb context stopped. */
#ifndef KN_WEB_WS_H
#define KN_WEB_WS_H

#include <stddef.h>

#include <jansson.h>

#include "kernels/error.h"

#define KN_WS_MAX_CLIENTS 256
#define KN_WS_QUEUE_MAX ((size_t)8 << 20)

struct mg_context;
typedef struct kn_ws_hub kn_ws_hub;

typedef int (*kn_ws_remaining_fn)(void *user);

/* max_upload: the server's body cap, reported in the feature flags. */
int kn_ws_hub_new(kn_ws_hub **out, kn_ws_remaining_fn remaining, void *user, size_t max_upload, kn_err *err);
void kn_ws_hub_free(kn_ws_hub *hub);
void kn_ws_hub_attach(kn_ws_hub *hub, struct mg_context *ctx);

/* The feature flags of GET /features and the WS handshake (new reference). */
json_t *kn_ws_features(size_t max_upload);

/* data is stolen (NULL is ignored: an allocation already failed). */
void kn_ws_send(kn_ws_hub *hub, const char *sid, const char *type, json_t *data);
/* One binary frame (previews, progress text: web/preview.h), same delivery. */
void kn_ws_send_binary(kn_ws_hub *hub, const char *sid, const void *data, size_t len);

#endif
