/* Names confined to one folder: see kernels/confine.h. */
#include "kernels/confine.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool component_ok(const char *s, size_t len) {
    if (len == 0 || len > KN_CONFINE_NAME_MAX) return false;
    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.')) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '/' || c == '\\') return false;
    }
    return true;
}

bool kn_confine_name_ok(const char *name) { return name && component_ok(name, strlen(name)); }

bool kn_confine_subfolder_ok(const char *sub) {
    if (!sub) return true;
    size_t n = strlen(sub);
    if (n > KN_CONFINE_SUBFOLDER_MAX || sub[0] == '/') return false;
    for (const char *p = sub; *p;) {
        size_t len = strcspn(p, "/");
        bool skip = len == 0 || (len == 1 && p[0] == '.');
        if (!skip && !component_ok(p, len)) return false;
        p += len;
        if (*p) p++;
    }
    return true;
}

int kn_confine_open_dir(const char *root, const char *subfolder, bool create, int *dirfd, kn_err *err) {
    *dirfd = -1;
    if (!kn_confine_subfolder_ok(subfolder))
        return kn_fail(err, KN_ERR_INVALID, "subfolder '%s' is not allowed", subfolder);
    if (create && mkdir(root, 0755) != 0 && errno != EEXIST)
        return kn_fail(err, KN_ERR_IO, "cannot create folder '%s': %s", root, strerror(errno));
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return kn_fail(err, KN_ERR_NOT_FOUND, "folder '%s' is not available: %s", root, strerror(errno));
    for (const char *p = subfolder ? subfolder : ""; *p;) {
        size_t len = strcspn(p, "/");
        char comp[KN_CONFINE_NAME_MAX + 1];
        if (len > 0 && !(len == 1 && p[0] == '.')) {
            memcpy(comp, p, len);
            comp[len] = '\0';
            if (create && mkdirat(fd, comp, 0755) != 0 && errno != EEXIST) {
                int e = errno;
                close(fd);
                return kn_fail(err, KN_ERR_IO, "cannot create subfolder '%s': %s", subfolder, strerror(e));
            }
            /* O_NOFOLLOW: a symlinked component is refused, wherever it points. */
            int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            close(fd);
            if (next < 0) return kn_fail(err, KN_ERR_NOT_FOUND, "subfolder '%s' is not available", subfolder);
            fd = next;
        }
        p += len;
        if (*p) p++;
    }
    *dirfd = fd;
    return KN_OK;
}
