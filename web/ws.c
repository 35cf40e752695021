/* WebSocket clients and delivery: see web/ws.h. */
#include "web/ws.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <civetweb.h>

#include "graph/executor.h"
#include "kernels/json.h"
#include "web/stack.h"

#define KN_WS_SID_MAX 128

typedef struct ws_client {
    struct mg_connection *conn;
    char sid[KN_WS_SID_MAX + 1];
    unsigned long seq; /* connection order: the newest socket of a sid gets its messages */
    int got_text;      /* the feature_flags handshake only counts as the first text frame */
} ws_client;

struct kn_ws_hub {
    pthread_mutex_t mu;
    ws_client *clients[KN_WS_MAX_CLIENTS];
    unsigned long next_seq;
    size_t max_upload;
    kn_ws_remaining_fn remaining;
    void *user;
};

int kn_ws_hub_new(kn_ws_hub **out, kn_ws_remaining_fn remaining, void *user, size_t max_upload, kn_err *err) {
    kn_ws_hub *hub = calloc(1, sizeof *hub);
    if (!hub) return kn_fail(err, KN_ERR_NOMEM, "websocket hub: out of memory");
    pthread_mutex_init(&hub->mu, NULL);
    hub->remaining = remaining;
    hub->max_upload = max_upload;
    hub->user = user;
    *out = hub;
    return KN_OK;
}

void kn_ws_hub_free(kn_ws_hub *hub) {
    if (!hub) return;
    for (int i = 0; i < KN_WS_MAX_CLIENTS; i++) free(hub->clients[i]);
    pthread_mutex_destroy(&hub->mu);
    free(hub);
}

json_t *kn_ws_features(size_t max_upload) {
    return json_pack("{s:b, s:I, s:{s:{s:b}}}", "supports_preview_metadata", 0, "max_upload_size",
                     (json_int_t)max_upload, "extension", "manager", "supports_v4", 0);
}

/* Caller holds hub->mu. */
static void write_text(struct mg_connection *conn, const char *text) {
    mg_websocket_write(conn, MG_WEBSOCKET_OPCODE_TEXT, text, strlen(text));
}

static char *message_text(const char *type, json_t *data) {
    json_t *msg = data ? json_pack("{s:s, s:o}", "type", type, "data", data) : NULL;
    char *text = msg ? kn_json_dumps(msg, 0) : NULL;
    json_decref(msg);
    return text;
}

void kn_ws_send(kn_ws_hub *hub, const char *sid, const char *type, json_t *data) {
    char *text = message_text(type, data);
    if (!text) return;
    pthread_mutex_lock(&hub->mu);
    /* A replaced socket stays open until its client closes it but no longer
     * gets its sid's messages: only the newest socket of the sid does. */
    int target = -1;
    for (int i = 0; i < KN_WS_MAX_CLIENTS; i++) {
        ws_client *c = hub->clients[i];
        if (!c) continue;
        if (!sid) write_text(c->conn, text);
        else if (strcmp(c->sid, sid) == 0 && (target < 0 || c->seq > hub->clients[target]->seq)) target = i;
    }
    if (target >= 0) write_text(hub->clients[target]->conn, text);
    pthread_mutex_unlock(&hub->mu);
    free(text);
}

void kn_ws_send_binary(kn_ws_hub *hub, const char *sid, const void *data, size_t len) {
    pthread_mutex_lock(&hub->mu);
    int target = -1;
    for (int i = 0; i < KN_WS_MAX_CLIENTS; i++) {
        ws_client *c = hub->clients[i];
        if (!c) continue;
        if (!sid) mg_websocket_write(c->conn, MG_WEBSOCKET_OPCODE_BINARY, data, len);
        else if (strcmp(c->sid, sid) == 0 && (target < 0 || c->seq > hub->clients[target]->seq)) target = i;
    }
    if (target >= 0) mg_websocket_write(hub->clients[target]->conn, MG_WEBSOCKET_OPCODE_BINARY, data, len);
    pthread_mutex_unlock(&hub->mu);
}

static int on_connect(const struct mg_connection *conn, void *user) {
    kn_ws_hub *hub = user;
    pthread_mutex_lock(&hub->mu);
    int free_slot = 0;
    for (int i = 0; i < KN_WS_MAX_CLIENTS && !free_slot; i++) free_slot = hub->clients[i] == NULL;
    pthread_mutex_unlock(&hub->mu);
    return free_slot ? 0 : 1; /* non-zero refuses the handshake */
}

/* clientId when it is printable ASCII of sane length, else a new hex id. */
static void pick_sid(struct mg_connection *conn, char *sid) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *q = ri ? ri->query_string : NULL;
    int n = q ? mg_get_var(q, strlen(q), "clientId", sid, KN_WS_SID_MAX + 1) : -1;
    int ok = n > 0;
    for (int i = 0; ok && i < n; i++) ok = sid[i] > 0x20 && sid[i] < 0x7f && sid[i] != '"' && sid[i] != '\\';
    if (!ok) kn_uuid4(sid, 0);
}

static void on_ready(struct mg_connection *conn, void *user) {
    kn_ws_hub *hub = user;
    ws_client *c = calloc(1, sizeof *c);
    if (!c) return;
    c->conn = conn;
    pick_sid(conn, c->sid);
    int remaining = hub->remaining(hub->user);
    char *text = message_text("status", json_pack("{s:{s:{s:i}}, s:s}", "status", "exec_info", "queue_remaining",
                                                  remaining, "sid", c->sid));
    pthread_mutex_lock(&hub->mu);
    int slot = -1;
    for (int i = 0; i < KN_WS_MAX_CLIENTS && slot < 0; i++)
        if (!hub->clients[i]) slot = i;
    if (slot >= 0) {
        c->seq = hub->next_seq++;
        hub->clients[slot] = c;
        mg_set_user_connection_data(conn, c);
        if (text) write_text(conn, text);
    }
    pthread_mutex_unlock(&hub->mu);
    if (slot < 0) free(c);
    free(text);
}

typedef struct frame {
    kn_ws_hub *hub;
    struct mg_connection *conn;
    const char *data;
    size_t len;
} frame;

/* Answers a feature_flags handshake frame; anything else is ignored. */
static void answer_feature_flags(void *arg) {
    frame *f = arg;
    json_t *msg = json_loadb(f->data, f->len, 0, NULL);
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (type && strcmp(type, "feature_flags") == 0) {
        char *text = message_text("feature_flags", kn_ws_features(f->hub->max_upload));
        pthread_mutex_lock(&f->hub->mu);
        if (text && mg_get_user_connection_data(f->conn)) write_text(f->conn, text);
        pthread_mutex_unlock(&f->hub->mu);
        free(text);
    }
    json_decref(msg);
}

static int on_data(struct mg_connection *conn, int bits, char *data, size_t len, void *user) {
    kn_ws_hub *hub = user;
    int opcode = bits & 0x0f;
    if (opcode == MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE) return 0;
    if (opcode != MG_WEBSOCKET_OPCODE_TEXT) return 1;
    pthread_mutex_lock(&hub->mu);
    ws_client *c = mg_get_user_connection_data(conn);
    int first = c && !c->got_text;
    if (c) c->got_text = 1;
    pthread_mutex_unlock(&hub->mu);
    if (!first) return 1;
    frame f = {hub, conn, data, len};
    kn_err err;
    kn_web_on_stack(answer_feature_flags, &f, &err); /* hostile nesting: see web/stack.h */
    return 1;
}

static void on_close(const struct mg_connection *conn, void *user) {
    kn_ws_hub *hub = user;
    pthread_mutex_lock(&hub->mu);
    for (int i = 0; i < KN_WS_MAX_CLIENTS; i++) {
        if (hub->clients[i] && hub->clients[i]->conn == conn) {
            free(hub->clients[i]);
            hub->clients[i] = NULL;
        }
    }
    mg_set_user_connection_data((struct mg_connection *)conn, NULL);
    pthread_mutex_unlock(&hub->mu);
}

void kn_ws_hub_attach(kn_ws_hub *hub, struct mg_context *ctx) {
    mg_set_websocket_handler(ctx, "/ws", on_connect, on_ready, on_data, on_close, hub);
    mg_set_websocket_handler(ctx, "/api/ws", on_connect, on_ready, on_data, on_close, hub);
}
