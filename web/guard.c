/* Host allowlist, origin guard and connections per address: see web/guard.h. */
#include "web/guard.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <civetweb.h>

#define KN_GUARD_HOST_MAX 256

struct kn_guard {
    char **hosts; /* lower case, without brackets or port */
    int n_hosts;
    bool any_ip, any_host, check_origin;
    int port;
};

/* Splits "name[:port]", "[v6]:port" or a bare IPv6 address: the name
 * (lower case, without brackets) and the port text (empty when none). */
static bool split_host(const char *h, size_t hlen, char *name, size_t name_len, const char **port, size_t *port_len) {
    const char *start = h, *end = h + hlen, *after;
    const char *colon = memchr(h, ':', hlen);
    if (hlen && h[0] == '[') {
        const char *close = memchr(h, ']', hlen);
        if (!close) return false;
        start = h + 1;
        end = close;
        after = close + 1;
    } else if (colon && !memchr(colon + 1, ':', hlen - (size_t)(colon + 1 - h))) {
        end = after = colon;
    } else {
        after = end; /* no port, or an unbracketed IPv6 address */
    }
    size_t n = (size_t)(end - start), rest = (size_t)(h + hlen - after);
    if (n == 0 || n >= name_len || (rest && after[0] != ':')) return false;
    for (size_t i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)start[i]);
    name[n] = '\0';
    *port = rest ? after + 1 : after;
    *port_len = rest ? rest - 1 : 0;
    return true;
}

static bool ip_literal(const char *name) {
    unsigned char buf[16];
    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

static int add_host(kn_guard *g, const char *h, size_t len, kn_err *err) {
    char name[KN_GUARD_HOST_MAX];
    const char *port;
    size_t port_len;
    while (len && isspace((unsigned char)*h)) h++, len--;
    while (len && isspace((unsigned char)h[len - 1])) len--;
    if (len == 0) return KN_OK;
    if (len == 1 && h[0] == '*') {
        g->any_host = true;
        return KN_OK;
    }
    if (!split_host(h, len, name, sizeof name, &port, &port_len))
        return kn_fail(err, KN_ERR_INVALID, "'%.*s' is not a host name", (int)len, h);
    if (strcmp(name, "0.0.0.0") == 0 || strcmp(name, "::") == 0) {
        g->any_ip = true; /* every interface: any address a client may have used */
        return KN_OK;
    }
    char **grown = realloc(g->hosts, (size_t)(g->n_hosts + 1) * sizeof *grown);
    if (!grown) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    g->hosts = grown;
    if (!(g->hosts[g->n_hosts] = strdup(name))) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    g->n_hosts++;
    return KN_OK;
}

static int add_list(kn_guard *g, const char *list, kn_err *err) {
    for (const char *p = list; p && *p;) {
        size_t n = strcspn(p, ",");
        int rc = add_host(g, p, n, err);
        if (rc) return rc;
        p += n + (p[n] == ',');
    }
    return KN_OK;
}

int kn_guard_new(kn_guard **out, const char *listen, int port, const char *allow_hosts, bool check_origin,
                 kn_err *err) {
    *out = NULL;
    kn_guard *g = calloc(1, sizeof *g);
    if (!g) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    g->check_origin = check_origin;
    g->port = port;
    int rc = add_list(g, "localhost,127.0.0.1,[::1]", err);
    if (!rc) rc = add_list(g, listen, err);
    if (!rc && allow_hosts && (rc = add_list(g, allow_hosts, err))) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg); /* err->msg is rewritten below */
        rc = kn_fail(err, rc, "--allow-host: %s", why);
    }
    if (rc) {
        kn_guard_free(g);
        return rc;
    }
    *out = g;
    return KN_OK;
}

void kn_guard_free(kn_guard *g) {
    if (!g) return;
    for (int i = 0; i < g->n_hosts; i++) free(g->hosts[i]);
    free(g->hosts);
    free(g);
}

static bool host_allowed(const kn_guard *g, const char *name) {
    if (g->any_host || (g->any_ip && ip_literal(name))) return true;
    for (int i = 0; i < g->n_hosts; i++)
        if (strcmp(g->hosts[i], name) == 0) return true;
    return false;
}

const char *kn_guard_request(const kn_guard *g, const char *host, const char *origin) {
    char hname[KN_GUARD_HOST_MAX], oname[KN_GUARD_HOST_MAX];
    const char *hport = "", *oport;
    size_t hport_len = 0, oport_len;
    if (host && !(split_host(host, strlen(host), hname, sizeof hname, &hport, &hport_len) && host_allowed(g, hname)))
        return "Host not allowed (kiln serve --allow-host adds names)";
    if (!origin || !g->check_origin) return NULL;
    if (!host) return "cross-origin request refused";
    const char *o = strstr(origin, "://");
    o = o ? o + 3 : origin;
    size_t olen = strcspn(o, "/");
    if (!split_host(o, olen, oname, sizeof oname, &oport, &oport_len) || strcmp(oname, hname) != 0 ||
        (oport_len && hport_len && (oport_len != hport_len || memcmp(oport, hport, oport_len) != 0)))
        return "cross-origin request refused";
    return NULL;
}

/* ---- connections per address ----------------------------------------------------- */

typedef struct peer {
    unsigned char key[16]; /* IPv4 as ::ffff:a.b.c.d, IPv6 cut to its /64 */
    int fd;
} peer;

static int peer_cmp(const void *a, const void *b) {
    const peer *x = a, *y = b;
    int c = memcmp(x->key, y->key, 16);
    return c ? c : (x->fd > y->fd) - (x->fd < y->fd);
}

/* The client key of a connected socket on the server's port, or false. */
static bool socket_peer(int fd, int port, unsigned char key[16]) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    struct sockaddr *sa = (struct sockaddr *)&ss;
    if (getsockname(fd, sa, &len) != 0 || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)) return false;
    int local = ntohs(sa->sa_family == AF_INET ? ((struct sockaddr_in *)sa)->sin_port : ((struct sockaddr_in6 *)sa)->sin6_port);
    len = sizeof ss;
    if (local != port || getpeername(fd, sa, &len) != 0) return false; /* a listener has no peer */
    memset(key, 0, 16);
    if (sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(key, &((struct sockaddr_in6 *)sa)->sin6_addr, 16);
    if (memcmp(key, mapped, 12) != 0) memset(key + 8, 0, 8); /* one /64 is one client */
    return true;
}

/* civetweb tells its callbacks nothing about a connection before its request
 * is read, so the count is the kernel's: the process's sockets on the
 * server's port, by peer. Each address's sockets past the cap are shut down
 * (civetweb's read or write on them ends at once and it closes them). */
static void enforce_cap(int port) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return;
    peer *peers = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        unsigned char key[16];
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == dirfd(d) || !socket_peer(fd, port, key)) continue;
        if (n == cap) {
            peer *grown = realloc(peers, (cap = cap ? 2 * cap : 256) * sizeof *peers);
            if (!grown) break;
            peers = grown;
        }
        memcpy(peers[n].key, key, 16);
        peers[n++].fd = fd;
    }
    closedir(d);
    qsort(peers, n, sizeof *peers, peer_cmp);
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    for (size_t i = KN_GUARD_PER_ADDRESS; i < n; i++) {
        unsigned char key[16];
        if (memcmp(peers[i].key, peers[i - KN_GUARD_PER_ADDRESS].key, 16) != 0) continue;
        /* checked again: the socket may have closed and its number been reused since the scan */
        if (!socket_peer(peers[i].fd, port, key) || memcmp(key, peers[i].key, 16) != 0) continue;
        (void)send(peers[i].fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT); /* best effort */
        shutdown(peers[i].fd, SHUT_RDWR);
    }
    free(peers);
}

/* ---- civetweb hooks ------------------------------------------------------------------ */

static int on_init_connection(const struct mg_connection *conn, void **data) {
    (void)data;
    const kn_guard *g = mg_get_user_data(mg_get_context(conn));
    enforce_cap(g->port);
    return 0;
}

/* Before civetweb's own CORS preflight answer and WebSocket handshake. */
static int on_begin_request(struct mg_connection *conn) {
    const kn_guard *g = mg_get_user_data(mg_get_context(conn));
    const char *why = kn_guard_request(g, mg_get_header(conn, "Host"), mg_get_header(conn, "Origin"));
    if (!why) return 0;
    mg_printf(conn,
              "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
              "Cache-Control: no-cache\r\nConnection: close\r\n\r\n%s",
              strlen(why), why);
    return 403;
}

void kn_guard_hooks(struct mg_callbacks *cb) {
    cb->init_connection = on_init_connection;
    cb->begin_request = on_begin_request;
}
