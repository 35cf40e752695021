/* WebSocket clients and delivery: see web/ws.h. */
#include "web/ws.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <civetweb.h>

#include "graph/executor.h"
#include "kernels/json.h"
#include "web/stack.h"

#define KN_WS_SID_MAX 128
#define KN_WS_WRITER_STACK ((size_t)256 << 10) /* mg_websocket_write needs little */

/* One frame waiting for a socket's writer. */
typedef struct ws_msg {
    struct ws_msg *next;
    int opcode;
    size_t len;
    char data[];
} ws_msg;

typedef struct ws_client {
    kn_ws_hub *hub;
    struct mg_connection *conn;
    char sid[KN_WS_SID_MAX + 1];
    unsigned long seq; /* connection order: the newest socket of a sid gets its messages */
    int got_text;      /* the feature_flags handshake only counts as the first text frame */
    /* Outgoing frames, guarded by hub->mu, sent in order by this socket's own
     * writer thread so that a client that does not read stalls nobody else. */
    ws_msg *head, *tail;
    size_t queued;  /* bytes, frame headers counted as sizeof(ws_msg) */
    bool dropped;   /* the queue overflowed or a write failed: nothing more is queued */
    bool closing;   /* civetweb closed the socket: the writer ends */
    pthread_cond_t wake;
    pthread_t writer;
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

json_t *kn_ws_features(size_t max_upload) {
    return json_pack("{s:b, s:I, s:{s:{s:b}}}", "supports_preview_metadata", 0, "max_upload_size",
                     (json_int_t)max_upload, "extension", "manager", "supports_v4", 0);
}

/* Caller holds hub->mu. */
static void clear_queue(ws_client *c) {
    while (c->head) {
        ws_msg *m = c->head;
        c->head = m->next;
        free(m);
    }
    c->tail = NULL;
    c->queued = 0;
}

/* Caller holds hub->mu. `force` queues past the cap (the closing frame). */
static void push_frame(ws_client *c, int opcode, const void *data, size_t len, bool force) {
    if (c->dropped && !force) return;
    ws_msg *m = malloc(sizeof *m + len);
    if (!m) return; /* a lost message on OOM; the next one may fit */
    m->next = NULL;
    m->opcode = opcode;
    m->len = len;
    if (len) memcpy(m->data, data, len);
    if (c->tail) c->tail->next = m;
    else c->head = m;
    c->tail = m;
    c->queued += sizeof *m + len;
    pthread_cond_signal(&c->wake);
}

/* Caller holds hub->mu. A socket whose backlog passed KN_WS_QUEUE_MAX is
 * dropped: what it has not read yet is discarded and it gets a close frame
 * (1008), so it sees a clean end instead of a silent gap. */
static void enqueue(ws_client *c, int opcode, const void *data, size_t len) {
    if (c->dropped) return;
    if (c->queued + sizeof(ws_msg) + len <= KN_WS_QUEUE_MAX) {
        push_frame(c, opcode, data, len, false);
        return;
    }
    static const char close_frame[] = "\x03\xf0too slow: messages dropped"; /* status 1008 */
    clear_queue(c);
    c->dropped = true;
    push_frame(c, MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE, close_frame, sizeof close_frame - 1, true);
}

static void *writer_main(void *arg) {
    ws_client *c = arg;
    kn_ws_hub *hub = c->hub;
    pthread_mutex_lock(&hub->mu);
    for (;;) {
        while (!c->head && !c->closing) pthread_cond_wait(&c->wake, &hub->mu);
        if (c->closing) break;
        ws_msg *m = c->head;
        c->head = m->next;
        if (!c->head) c->tail = NULL;
        c->queued -= sizeof *m + m->len;
        pthread_mutex_unlock(&hub->mu);
        int rc = mg_websocket_write(c->conn, m->opcode, m->data, m->len); /* blocks at most civetweb's timeout */
        free(m);
        pthread_mutex_lock(&hub->mu);
        if (rc <= 0 && !c->dropped) { /* gone, or stuck past the timeout mid-frame: the stream is unusable */
            c->dropped = true;
            clear_queue(c);
        }
    }
    pthread_mutex_unlock(&hub->mu);
    return NULL;
}

/* Ends a client taken out of the table: its writer first (it may be inside
 * a write), then its memory. */
static void client_end(kn_ws_hub *hub, ws_client *c) {
    pthread_mutex_lock(&hub->mu);
    c->closing = true;
    pthread_cond_signal(&c->wake);
    pthread_mutex_unlock(&hub->mu);
    pthread_join(c->writer, NULL);
    clear_queue(c);
    pthread_cond_destroy(&c->wake);
    free(c);
}

void kn_ws_hub_free(kn_ws_hub *hub) {
    if (!hub) return;
    for (int i = 0; i < KN_WS_MAX_CLIENTS; i++)
        if (hub->clients[i]) client_end(hub, hub->clients[i]);
    pthread_mutex_destroy(&hub->mu);
    free(hub);
}

static char *message_text(const char *type, json_t *data) {
    json_t *msg = data ? json_pack("{s:s, s:o}", "type", type, "data", data) : NULL;
    char *text = msg ? kn_json_dumps(msg, 0) : NULL;
    json_decref(msg);
    return text;
}

/* Queues one frame for the socket of sid (the newest), or for all. */
static void deliver(kn_ws_hub *hub, const char *sid, int opcode, const void *data, size_t len) {
    pthread_mutex_lock(&hub->mu);
    /* A replaced socket stays open until its client closes it but no longer
     * gets its sid's messages: only the newest socket of the sid does. */
    int target = -1;
    for (int i = 0; i < KN_WS_MAX_CLIENTS; i++) {
        ws_client *c = hub->clients[i];
        if (!c) continue;
        if (!sid) enqueue(c, opcode, data, len);
        else if (strcmp(c->sid, sid) == 0 && (target < 0 || c->seq > hub->clients[target]->seq)) target = i;
    }
    if (target >= 0) enqueue(hub->clients[target], opcode, data, len);
    pthread_mutex_unlock(&hub->mu);
}

void kn_ws_send(kn_ws_hub *hub, const char *sid, const char *type, json_t *data) {
    char *text = message_text(type, data);
    if (text) deliver(hub, sid, MG_WEBSOCKET_OPCODE_TEXT, text, strlen(text));
    free(text);
}

void kn_ws_send_binary(kn_ws_hub *hub, const char *sid, const void *data, size_t len) {
    deliver(hub, sid, MG_WEBSOCKET_OPCODE_BINARY, data, len);
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
    c->hub = hub;
    c->conn = conn;
    pick_sid(conn, c->sid);
    pthread_cond_init(&c->wake, NULL);
    int remaining = hub->remaining(hub->user);
    char *text = message_text("status", json_pack("{s:{s:{s:i}}, s:s}", "status", "exec_info", "queue_remaining",
                                                  remaining, "sid", c->sid));
    pthread_attr_t attr;
    bool started = pthread_attr_init(&attr) == 0;
    if (started) {
        started = pthread_attr_setstacksize(&attr, KN_WS_WRITER_STACK) == 0 &&
                  pthread_create(&c->writer, &attr, writer_main, c) == 0;
        pthread_attr_destroy(&attr);
    }
    pthread_mutex_lock(&hub->mu);
    int slot = -1;
    for (int i = 0; i < KN_WS_MAX_CLIENTS && slot < 0 && started; i++)
        if (!hub->clients[i]) slot = i;
    if (slot >= 0) {
        c->seq = hub->next_seq++;
        hub->clients[slot] = c;
        mg_set_user_connection_data(conn, c);
        if (text) enqueue(c, MG_WEBSOCKET_OPCODE_TEXT, text, strlen(text));
    }
    pthread_mutex_unlock(&hub->mu);
    free(text);
    if (slot >= 0) return;
    /* not served: its frames are refused in on_data, which closes it */
    if (started) client_end(hub, c);
    else {
        pthread_cond_destroy(&c->wake);
        free(c);
    }
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
        ws_client *c = mg_get_user_connection_data(f->conn);
        if (text && c) enqueue(c, MG_WEBSOCKET_OPCODE_TEXT, text, strlen(text));
        pthread_mutex_unlock(&f->hub->mu);
        free(text);
    }
    json_decref(msg);
}

static int on_data(struct mg_connection *conn, int bits, char *data, size_t len, void *user) {
    kn_ws_hub *hub = user;
    int opcode = bits & 0x0f;
    if (opcode == MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE) return 0;
    pthread_mutex_lock(&hub->mu);
    ws_client *c = mg_get_user_connection_data(conn);
    bool served = c && !c->dropped, first = served && opcode == MG_WEBSOCKET_OPCODE_TEXT && !c->got_text;
    if (first) c->got_text = 1;
    pthread_mutex_unlock(&hub->mu);
    if (!served) return 0; /* not in the table, or dropped: close it now that it speaks */
    if (!first) return 1;
    frame f = {hub, conn, data, len};
    kn_err err;
    kn_web_on_stack(answer_feature_flags, &f, &err); /* hostile nesting: see web/stack.h */
    return 1;
}

static void on_close(const struct mg_connection *conn, void *user) {
    kn_ws_hub *hub = user;
    ws_client *c = NULL;
    pthread_mutex_lock(&hub->mu);
    for (int i = 0; i < KN_WS_MAX_CLIENTS && !c; i++) {
        if (hub->clients[i] && hub->clients[i]->conn == conn) {
            c = hub->clients[i];
            hub->clients[i] = NULL;
        }
    }
    mg_set_user_connection_data((struct mg_connection *)conn, NULL);
    pthread_mutex_unlock(&hub->mu);
    if (c) client_end(hub, c);
}

void kn_ws_hub_attach(kn_ws_hub *hub, struct mg_context *ctx) {
    mg_set_websocket_handler(ctx, "/ws", on_connect, on_ready, on_data, on_close, hub);
    mg_set_websocket_handler(ctx, "/api/ws", on_connect, on_ready, on_data, on_close, hub);
}
