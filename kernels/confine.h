/* kn_confine: names that stay inside one folder. The one resolver for every
 * file a client names: the server's /view, /upload and userdata routes
 * (web/files.h) and the saving nodes' filename_prefix (nodes/save_path.h).
 *
 * Contract:
 *  - A file name is one path component: 1..255 bytes, no '/', '\\' or
 *    control characters, not "." or "..". A subfolder is '/'-separated
 *    components of the same kind ("" and "." components are skipped as
 *    normpath does); "..", a leading '/' and '\\' are refused
 *    (kn_confine_name_ok / kn_confine_subfolder_ok).
 *  - kn_confine_open_dir never joins a path for open(): it opens the root,
 *    then each subfolder component with openat(O_NOFOLLOW | O_DIRECTORY)
 *    (creating missing ones with mode 0755 when `create`), so a symlink
 *    anywhere below the root, pointing in or out, is refused with
 *    KN_ERR_NOT_FOUND, as is a missing component; a bad subfolder is
 *    KN_ERR_INVALID, other system failures KN_ERR_IO. The root itself is
 *    configuration and may be a symlink. *dirfd is the folder (close() it).
 *  - Nothing here keeps state; safe from any thread. */
#ifndef KN_KERNELS_CONFINE_H
#define KN_KERNELS_CONFINE_H

#include <stdbool.h>

#include "kernels/error.h"

#define KN_CONFINE_NAME_MAX 255
#define KN_CONFINE_SUBFOLDER_MAX 1024

bool kn_confine_name_ok(const char *name);
bool kn_confine_subfolder_ok(const char *subfolder);
int kn_confine_open_dir(const char *root, const char *subfolder, bool create, int *dirfd, kn_err *err);

#endif
