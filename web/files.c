/* Confined file access for the server: see web/files.h. */
#include "web/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/confine.h"

/* "<stem> (k)<ext>" candidates tried before giving up on a crowded name. */
#define KN_WEB_MAX_RENAMES 10000

/* The checks and the walk are kernels/confine.h's, shared with the saving nodes. */
bool kn_web_name_ok(const char *name) { return kn_confine_name_ok(name); }
bool kn_web_subfolder_ok(const char *sub) { return kn_confine_subfolder_ok(sub); }
int kn_web_open_dir(const char *root, const char *subfolder, bool create, int *dirfd, kn_err *err) {
    return kn_confine_open_dir(root, subfolder, create, dirfd, err);
}

/* True when `name` is one of the directory's entries. */
static bool listed(int dirfd, const char *name) {
    int dup_fd = dup(dirfd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0) close(dup_fd);
        return false;
    }
    rewinddir(d);
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d))) found = strcmp(e->d_name, name) == 0;
    closedir(d);
    return found;
}

int kn_web_open_file(const char *root, const char *subfolder, const char *name, int *fd, size_t *size,
                     kn_err *err) {
    *fd = -1;
    *size = 0;
    if (!kn_web_name_ok(name)) return kn_fail(err, KN_ERR_INVALID, "file name '%s' is not allowed", name ? name : "");
    int dirfd;
    int rc = kn_web_open_dir(root, subfolder, false, &dirfd, err);
    if (rc) return rc;
    int f = listed(dirfd, name) ? openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) : -1;
    close(dirfd);
    struct stat st;
    if (f < 0 || fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (f >= 0) close(f);
        return kn_fail(err, KN_ERR_NOT_FOUND, "file '%s' not found", name);
    }
    *fd = f;
    *size = (size_t)st.st_size;
    return KN_OK;
}

/* 1 when the regular file `name` in dirfd holds exactly data[0..len). */
static int same_bytes(int dirfd, const char *name, const void *data, size_t len) {
    int f = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (f < 0) return 0;
    int same = fstat(f, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == len;
    char buf[65536];
    for (size_t off = 0; same && off < len;) {
        ssize_t n = read(f, buf, sizeof buf);
        if (n <= 0 || (size_t)n > len - off || memcmp(buf, (const char *)data + off, (size_t)n) != 0) same = 0;
        else off += (size_t)n;
    }
    close(f);
    return same;
}

static int write_all(int f, const void *data, size_t len) {
    for (size_t off = 0; off < len;) {
        ssize_t n = write(f, (const char *)data + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        off += (size_t)n;
    }
    return 0;
}

int kn_web_store_upload(const char *root, const char *subfolder, const char *name, const void *data, size_t len,
                        bool overwrite, char *final, size_t final_len, kn_err *err) {
    if (!kn_web_name_ok(name)) return kn_fail(err, KN_ERR_INVALID, "file name '%s' is not allowed", name ? name : "");
    int dirfd;
    int rc = kn_web_open_dir(root, subfolder, true, &dirfd, err);
    if (rc) return rc;
    const char *dot = strrchr(name, '.');
    size_t stem = dot && dot != name ? (size_t)(dot - name) : strlen(name);
    snprintf(final, final_len, "%s", name);
    int f = -1;
    for (int k = 0; f < 0 && k <= KN_WEB_MAX_RENAMES; k++) {
        bool fits = k == 0 || (size_t)snprintf(final, final_len, "%.*s (%d)%s", (int)stem, name, k, name + stem) < final_len;
        if (!fits || !kn_web_name_ok(final)) {
            errno = ENAMETOOLONG;
            break;
        }
        /* O_NOFOLLOW: never write through a symlink planted in the folder. */
        int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL);
        f = openat(dirfd, final, flags, 0644);
        if (f >= 0) {
            struct stat st;
            if (fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
                close(f);
                close(dirfd);
                return kn_fail(err, KN_ERR_INVALID, "'%s' exists and is not a regular file", final);
            }
            break;
        }
        if (errno != EEXIST || overwrite) break;
        if (same_bytes(dirfd, final, data, len)) { /* ComfyUI reuses an identical upload */
            close(dirfd);
            return KN_OK;
        }
    }
    if (f < 0) {
        int e = errno;
        close(dirfd);
        return kn_fail(err, e == ELOOP ? KN_ERR_INVALID : KN_ERR_IO, "cannot store upload '%s': %s", name, strerror(e));
    }
    rc = write_all(f, data, len) != 0 ? kn_fail(err, KN_ERR_IO, "cannot write upload '%s': %s", final, strerror(errno))
                                      : KN_OK;
    close(f);
    if (rc) unlinkat(dirfd, final, 0);
    close(dirfd);
    return rc;
}
