/* kn_guard: who may talk to `kiln serve` at all, checked before any route or
 * WebSocket handler runs (web/README.md "Hardening").
 *
 * Contract:
 *  - Host allowlist (stops DNS rebinding): a request whose Host header names
 *    a host not on the list is refused. The list holds "localhost",
 *    "127.0.0.1" and "::1", every address of --listen, and the names of
 *    --allow-host; a wildcard --listen address (0.0.0.0, ::) also admits
 *    every IP literal (a rebinding page always sends a DNS name), and an
 *    --allow-host of "*" admits every Host. Names compare case-insensitively
 *    and exactly: "x.localhost" and "localhost." are not "localhost". The
 *    port is not compared. A request without Host (HTTP/1.0 tools) passes.
 *  - Origin guard (unless check_origin is false, i.e. --enable-cors-header):
 *    a request carrying an Origin header passes only when the origin's
 *    host[:port] equals the Host header (ports compared only when both name
 *    one), for every route, the WebSocket handshake and CORS preflights
 *    alike. ComfyUI applies this to loopback Hosts only; with the allowlist
 *    above it applies to all.
 *  - Connections per client address (IPv6: per /64): when a civetweb
 *    worker takes a new connection, the process's sockets on the server's
 *    port are counted by peer, and those of an address past
 *    KN_GUARD_PER_ADDRESS are shut down before their request is read.
 *  - Nothing here changes after kn_guard_new: safe from any thread. */
#ifndef KN_WEB_GUARD_H
#define KN_WEB_GUARD_H

#include <stdbool.h>

#include "kernels/error.h"

#define KN_GUARD_PER_ADDRESS 64

typedef struct kn_guard kn_guard;

/* listen: the comma-separated --listen addresses, port: the server's;
 * allow_hosts: the comma-separated --allow-host names (NULL: none). */
int kn_guard_new(kn_guard **out, const char *listen, int port, const char *allow_hosts, bool check_origin,
                 kn_err *err);
void kn_guard_free(kn_guard *g);

/* NULL when the request may proceed, else why not (a static string). host
 * and origin are the raw header values, either may be NULL. */
const char *kn_guard_request(const kn_guard *g, const char *host, const char *origin);

/* Installs the checks above as civetweb callbacks (init_connection,
 * begin_request); mg_start's user data must be the guard. A request refused
 * by Host or Origin gets 403 with the reason as its text body, before any
 * handler runs (and before civetweb answers a CORS preflight itself). */
struct mg_callbacks;
void kn_guard_hooks(struct mg_callbacks *cb);

#endif
