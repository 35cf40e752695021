/* /userdata and /settings: see web/routes_user.h. */
#include "web/routes_user.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <civetweb.h>

#include "kernels/json.h"
#include "web/files.h"

#define USER_PATH_MAX 1024
#define SETTINGS_FILE "comfy.settings.json"
#define LIST_MAX 10000  /* entries one listing returns */
#define LIST_DEPTH 16   /* folders deep a recursive listing goes */

/* <user_dir>/default, the single user's folder. */
static int user_root(const char *user_dir, char *out, size_t len) {
    int n = snprintf(out, len, "%s/default", user_dir);
    if (n < 0 || (size_t)n >= len) return -1;
    if (mkdir(user_dir, 0755) != 0 && errno != EEXIST) return -1;
    if (mkdir(out, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

/* A client's relative path split into a checked folder part and file name.
 * encoded: the URL-encoded form from the request path. */
static bool split_path(const char *encoded, size_t n, char *sub, char *name) {
    char path[USER_PATH_MAX];
    if (n >= sizeof path) return false;
    char raw[USER_PATH_MAX];
    memcpy(raw, encoded, n);
    raw[n] = '\0';
    int len = mg_url_decode(raw, (int)n, path, (int)sizeof path, 0);
    /* an encoded NUL would cut the name short; a leading '/' is not a relative path */
    if (len <= 0 || (size_t)len != strlen(path) || path[0] == '/') return false;
    char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (strlen(base) >= 256) return false;
    memcpy(name, base, strlen(base) + 1);
    if (slash) *slash = '\0';
    snprintf(sub, USER_PATH_MAX, "%s", slash ? path : "");
    return kn_web_name_ok(name) && kn_web_subfolder_ok(sub);
}

static json_t *file_info(const char *rel, const struct stat *st) {
    return json_pack("{s:s, s:I, s:f, s:f}", "path", rel, "size", (json_int_t)st->st_size, "modified",
                     (double)st->st_mtim.tv_sec + st->st_mtim.tv_nsec * 1e-9, "created",
                     (double)st->st_ctim.tv_sec + st->st_ctim.tv_nsec * 1e-9);
}

typedef struct listing {
    json_t *items;
    bool full, split;
} listing;

/* Appends the files of dirfd (relative names prefixed by rel) to l. */
static void walk(int dirfd, const char *rel, bool recurse, int depth, listing *l) {
    int dup_fd = dup(dirfd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0) close(dup_fd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) && json_array_size(l->items) < LIST_MAX) {
        if (!kn_web_name_ok(e->d_name)) continue;
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        char path[USER_PATH_MAX];
        if ((size_t)snprintf(path, sizeof path, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= sizeof path) continue;
        if (S_ISDIR(st.st_mode)) {
            if (!recurse || depth >= LIST_DEPTH) continue;
            int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0) {
                walk(sub, path, recurse, depth + 1, l);
                close(sub);
            }
        } else if (S_ISREG(st.st_mode)) {
            if (l->full) {
                json_array_append_new(l->items, file_info(path, &st));
            } else if (l->split) {
                json_t *parts = json_pack("[s]", path);
                for (char *p = path, *q; p; p = q) {
                    q = strchr(p, '/');
                    if (q) *q++ = '\0';
                    json_array_append_new(parts, json_string(p));
                }
                json_array_append_new(l->items, parts);
            } else {
                json_array_append_new(l->items, json_string(path));
            }
        }
    }
    closedir(d);
}

static int cmp_items(const void *a, const void *b) {
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    const json_t *kx = json_is_object(x) ? json_object_get(x, "path") : json_is_array(x) ? json_array_get(x, 0) : x;
    const json_t *ky = json_is_object(y) ? json_object_get(y, "path") : json_is_array(y) ? json_array_get(y, 0) : y;
    return strcmp(json_string_value(kx) ? json_string_value(kx) : "", json_string_value(ky) ? json_string_value(ky) : "");
}

static int list_dir(const kn_http *h, const char *root) {
    char dir[USER_PATH_MAX];
    int found = kn_http_query(h, "dir", dir, sizeof dir);
    if (found < 0) return kn_http_error(h, 400, "dir is too long");
    if (!found || !dir[0]) return kn_http_error(h, 400, "Directory not provided");
    kn_err err;
    int dirfd;
    if (!kn_web_subfolder_ok(dir)) return kn_http_error(h, 400, "Invalid directory");
    if (kn_web_open_dir(root, dir, false, &dirfd, &err)) return kn_http_error(h, 404, "Directory not found");
    listing l = {json_array(), kn_http_query_flag(h, "full_info", false), kn_http_query_flag(h, "split", false)};
    walk(dirfd, "", kn_http_query_flag(h, "recurse", false), 0, &l);
    close(dirfd);
    size_t n = json_array_size(l.items);
    json_t **v = malloc((n ? n : 1) * sizeof *v);
    if (!v) {
        json_decref(l.items);
        return kn_http_error(h, 500, "out of memory");
    }
    for (size_t i = 0; i < n; i++) v[i] = json_incref(json_array_get(l.items, i));
    qsort(v, n, sizeof *v, cmp_items);
    json_array_clear(l.items);
    for (size_t i = 0; i < n; i++) json_array_append_new(l.items, v[i]);
    free(v);
    return kn_http_json(h, 200, l.items);
}

static int send_user_file(const kn_http *h, const char *root, const char *sub, const char *name) {
    int fd;
    size_t size;
    kn_err err;
    if (kn_web_open_file(root, sub, name, &fd, &size, &err)) return kn_http_error(h, 404, "File not found");
    char *buf = malloc(size ? size : 1);
    size_t got = 0;
    while (buf && got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    int st = buf && got == size ? kn_http_send(h, 200, strstr(name, ".json") ? "application/json" : "application/octet-stream",
                                               buf, size, NULL)
                                : kn_http_error(h, 500, "cannot read the file");
    free(buf);
    return st;
}

/* Answer of a store or move: the relative path, or its info with full_info. */
static int stored_reply(const kn_http *h, int dirfd, const char *sub, const char *name) {
    char rel[USER_PATH_MAX];
    snprintf(rel, sizeof rel, "%s%s%s", sub, *sub ? "/" : "", name);
    struct stat st;
    if (kn_http_query_flag(h, "full_info", false) && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return kn_http_json(h, 200, file_info(rel, &st));
    return kn_http_json(h, 200, json_string(rel));
}

static int store_file(const kn_http *h, const char *root, const char *sub, const char *name) {
    char *body;
    size_t len;
    int st = kn_http_body(h, &body, &len);
    if (st) return kn_http_error(h, st, st == 413 ? "request body too large" : "could not read the request body");
    bool overwrite = kn_http_query_flag(h, "overwrite", true);
    kn_err err;
    int dirfd;
    if (kn_web_open_dir(root, sub, true, &dirfd, &err)) {
        free(body);
        return kn_http_error(h, 400, "Invalid path");
    }
    int f = openat(dirfd, name, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL), 0644);
    struct stat fs;
    if (f < 0 || fstat(f, &fs) != 0 || !S_ISREG(fs.st_mode)) {
        int e = errno;
        if (f >= 0) close(f);
        close(dirfd);
        free(body);
        return e == EEXIST ? kn_http_error(h, 409, "File already exists") : kn_http_error(h, 400, "cannot write the file");
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(f, body + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        off += (size_t)n;
    }
    close(f);
    free(body);
    st = off == len ? stored_reply(h, dirfd, sub, name) : kn_http_error(h, 500, "cannot write the file");
    close(dirfd);
    return st;
}

static int delete_file(const kn_http *h, const char *root, const char *sub, const char *name) {
    kn_err err;
    int dirfd;
    struct stat st;
    if (kn_web_open_dir(root, sub, false, &dirfd, &err)) return kn_http_error(h, 404, "File not found");
    int rc = fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) ? unlinkat(dirfd, name, 0) : -1;
    close(dirfd);
    return rc == 0 ? kn_http_send(h, 204, "text/plain", "", 0, NULL) : kn_http_error(h, 404, "File not found");
}

static int move_file(const kn_http *h, const char *root, const char *from, size_t from_len, const char *to) {
    char sub[USER_PATH_MAX], name[256], dsub[USER_PATH_MAX], dname[256];
    if (!split_path(from, from_len, sub, name) || !split_path(to, strlen(to), dsub, dname))
        return kn_http_error(h, 400, "Invalid path");
    kn_err err;
    int src, dst;
    struct stat st;
    if (kn_web_open_dir(root, sub, false, &src, &err)) return kn_http_error(h, 404, "File not found");
    if (fstatat(src, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
        close(src);
        return kn_http_error(h, 404, "File not found");
    }
    if (kn_web_open_dir(root, dsub, true, &dst, &err)) {
        close(src);
        return kn_http_error(h, 400, "Invalid path");
    }
    bool overwrite = kn_http_query_flag(h, "overwrite", true);
    int rc = renameat2(src, name, dst, dname, overwrite ? 0 : RENAME_NOREPLACE);
    int e = errno;
    close(src);
    int status = rc == 0              ? stored_reply(h, dst, dsub, dname)
                 : e == EEXIST        ? kn_http_error(h, 409, "File already exists")
                                      : kn_http_error(h, 400, "cannot move the file");
    close(dst);
    return status;
}

int kn_route_userdata(const kn_http *h, const char *user_dir) {
    char root[USER_PATH_MAX];
    if (!user_dir || user_root(user_dir, root, sizeof root)) return kn_http_error(h, 500, "the user folder is not available");
    if (!h->param) {
        if (strcmp(h->method, "GET") && strcmp(h->method, "HEAD")) return kn_http_error(h, 405, "Method Not Allowed");
        return list_dir(h, root);
    }
    const char *move = strstr(h->param, "/move/");
    if (move) {
        if (strcmp(h->method, "POST")) return kn_http_error(h, 405, "Method Not Allowed");
        return move_file(h, root, h->param, (size_t)(move - h->param), move + 6);
    }
    char sub[USER_PATH_MAX], name[256];
    if (!split_path(h->param, strlen(h->param), sub, name)) return kn_http_error(h, 400, "Invalid path");
    if (!strcmp(h->method, "GET") || !strcmp(h->method, "HEAD")) return send_user_file(h, root, sub, name);
    if (!strcmp(h->method, "POST")) return store_file(h, root, sub, name);
    if (!strcmp(h->method, "DELETE")) return delete_file(h, root, sub, name);
    return kn_http_error(h, 405, "Method Not Allowed");
}

/* ---- settings --------------------------------------------------------------------- */

static json_t *load_settings(const char *root) {
    int fd;
    size_t size;
    kn_err err;
    json_t *s = NULL;
    if (!kn_web_open_file(root, "", SETTINGS_FILE, &fd, &size, &err)) {
        FILE *f = fdopen(fd, "rb");
        s = f ? json_loadf(f, 0, NULL) : NULL;
        if (f) fclose(f);
        else close(fd);
    }
    if (!json_is_object(s)) {
        json_decref(s);
        s = json_object();
    }
    return s;
}

/* Written to a temporary name and renamed, so a reader never sees half a file. */
static int save_settings(const char *root, const json_t *s) {
    char *text = kn_json_dumps(s, 4);
    kn_err err;
    int dirfd;
    if (!text || kn_web_open_dir(root, "", false, &dirfd, &err)) {
        free(text);
        return -1;
    }
    int f = openat(dirfd, SETTINGS_FILE ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    size_t len = strlen(text);
    int rc = f >= 0 && write(f, text, len) == (ssize_t)len ? 0 : -1;
    if (f >= 0) close(f);
    if (!rc) rc = renameat(dirfd, SETTINGS_FILE ".tmp", dirfd, SETTINGS_FILE);
    close(dirfd);
    free(text);
    return rc;
}

int kn_route_settings(const kn_http *h, const char *user_dir) {
    char root[USER_PATH_MAX], id[512];
    if (!user_dir || user_root(user_dir, root, sizeof root)) return kn_http_error(h, 500, "the user folder is not available");
    if (h->param) {
        size_t n = strlen(h->param);
        if (n >= sizeof id || mg_url_decode(h->param, (int)n, id, (int)sizeof id, 0) < 0)
            return kn_http_error(h, 400, "setting id is too long");
    }
    json_t *s = load_settings(root);
    if (!strcmp(h->method, "GET") || !strcmp(h->method, "HEAD")) {
        json_t *v = h->param ? json_object_get(s, id) : s;
        json_t *out = v ? json_incref(v) : json_null();
        json_decref(s);
        return kn_http_json(h, 200, out);
    }
    if (strcmp(h->method, "POST")) {
        json_decref(s);
        return kn_http_error(h, 405, "Method Not Allowed");
    }
    json_t *body;
    int st = kn_http_read_json(h, &body);
    if (st) {
        json_decref(s);
        return st;
    }
    if (h->param) json_object_set(s, id, body);
    else if (json_is_object(body)) json_object_update(s, body);
    else st = kn_http_error(h, 400, "expected an object of settings");
    if (!st) st = save_settings(root, s) ? kn_http_error(h, 500, "cannot store the settings") : kn_http_json(h, 200, json_object());
    json_decref(body);
    json_decref(s);
    return st;
}
