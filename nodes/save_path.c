/* Output file naming shared by the saving nodes: see nodes/save_path.h. */
#include "nodes/save_path.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kernels/confine.h"

/* filename_prefix's %width%, %height% and %year% ... %second% (local time). */
static void expand_prefix(const char *prefix, int64_t width, int64_t height, char *out, size_t cap) {
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    struct {
        const char *key;
        long long v;
        int digits;
    } subs[] = {{"%width%", width, 0},       {"%height%", height, 0},    {"%year%", tm.tm_year + 1900, 0},
                {"%month%", tm.tm_mon + 1, 2}, {"%day%", tm.tm_mday, 2},   {"%hour%", tm.tm_hour, 2},
                {"%minute%", tm.tm_min, 2},    {"%second%", tm.tm_sec, 2}};
    size_t o = 0;
    while (*prefix && o + 1 < cap) {
        size_t k = 0, nsubs = sizeof subs / sizeof subs[0];
        while (k < nsubs && strncmp(prefix, subs[k].key, strlen(subs[k].key)) != 0) k++;
        if (k == nsubs) {
            out[o++] = *prefix++;
            continue;
        }
        int w = snprintf(out + o, cap - o, "%0*lld", subs[k].digits, subs[k].v);
        o = w < 0 || (size_t)w >= cap - o ? cap - 1 : o + (size_t)w;
        prefix += strlen(subs[k].key);
    }
    out[o] = 0;
}

/* Splits a prefix as os.path.normpath + dirname/basename would, refusing
 * anything that leaves the output folder. */
static int split_prefix(kn_node_call *c, const char *prefix, char *subfolder, char *filename, size_t cap) {
    if (prefix[0] == '/') goto outside;
    char parts[64][256];
    int n = 0;
    for (const char *p = prefix; *p;) {
        size_t len = strcspn(p, "/");
        if (len >= sizeof parts[0] || n == 64)
            return kn_node_fail(c, "filename_prefix", KN_ERR_INVALID, "prefix is too long");
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (n == 0) goto outside;
            n--;
        } else if (len && !(len == 1 && p[0] == '.')) {
            memcpy(parts[n], p, len);
            parts[n++][len] = 0;
        }
        p += len;
        if (*p) p++;
    }
    if (n == 0) goto outside;
    subfolder[0] = 0;
    for (int i = 0; i < n - 1; i++) {
        size_t l = strlen(subfolder);
        snprintf(subfolder + l, cap - l, "%s%s", i ? "/" : "", parts[i]);
    }
    snprintf(filename, cap, "%s", parts[n - 1]);
    return KN_OK;
outside:
    return kn_node_fail(c, "filename_prefix", KN_ERR_INVALID, "Saving image outside the output folder is not allowed.");
}

static int mkdirs(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* ComfyUI's counter: 1 + the largest N of "<filename>_N..." in the folder. */
static long next_counter(int dirfd, const char *filename) {
    long best = 0;
    size_t fl = strlen(filename);
    int fd = dup(dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0) close(fd);
        return 1;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, filename, fl) != 0 || e->d_name[fl] != '_') continue;
        char *end;
        long v = strtol(e->d_name + fl + 1, &end, 10);
        if (end == e->d_name + fl + 1 || (*end && *end != '_') || v < 0) v = 0; /* int() failed */
        if (v > best) best = v;
    }
    closedir(d);
    return best + 1;
}

int kn_save_path_get(kn_node_call *c, const char *base_dir, const char *prefix, int64_t width, int64_t height,
                     kn_save_path *out) {
    char expanded[1024];
    expand_prefix(prefix, width, height, expanded, sizeof expanded);
    if (split_prefix(c, expanded, out->subfolder, out->filename, sizeof out->subfolder)) return c->err->code;
    snprintf(out->folder, sizeof out->folder, "%s%s%s", base_dir, *out->subfolder ? "/" : "", out->subfolder);
    /* base_dir is configuration (made as needed); below it the subfolder goes through the server's
     * resolver (kernels/confine.h), so a symlinked subfolder is refused as /view and /upload refuse it. */
    if (mkdirs(base_dir) != 0)
        return kn_node_fail(c, NULL, KN_ERR_IO, "cannot create the folder %s: %s", base_dir, strerror(errno));
    kn_err e;
    kn_err_clear(&e);
    int dirfd;
    if (kn_confine_open_dir(base_dir, out->subfolder, true, &dirfd, &e))
        return kn_node_fail(c, "filename_prefix", e.code == KN_ERR_IO ? KN_ERR_IO : KN_ERR_INVALID,
                            "Saving image outside the output folder is not allowed: %s", e.msg);
    out->counter = next_counter(dirfd, out->filename);
    close(dirfd);
    return KN_OK;
}
