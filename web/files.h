/* kn_web files: reach files inside one of the server's folders (input,
 * output, temp, the UI) from names a client sent, without ever letting a
 * client-supplied path leave that folder.
 *
 * Contract:
 *  - A file name is one path component: 1..255 bytes, no '/', '\\' or
 *    control characters, not "." or "..". A subfolder is '/'-separated
 *    components of the same kind ("" and "." components are skipped as
 *    normpath does); "..", a leading '/' and '\\' are refused. These checks
 *    are kn_web_name_ok / kn_web_subfolder_ok; the functions below apply them
 *    again themselves.
 *  - Paths are never joined and handed to open(): the walk opens the root,
 *    then each subfolder component with openat(O_NOFOLLOW | O_DIRECTORY),
 *    so a symlink anywhere below the root (pointing in or out) is refused
 *    with KN_ERR_NOT_FOUND, as is a missing component. The final name must
 *    be one of the directory's enumerated entries and is opened with
 *    O_NOFOLLOW; only regular files are served.
 *  - Status codes: KN_ERR_INVALID for names that fail the checks,
 *    KN_ERR_NOT_FOUND for anything absent or refused on disk, KN_ERR_IO for
 *    other system failures, KN_ERR_NOMEM. The HTTP layer maps them.
 *  - The name checks and the folder walk are kernels/confine.h's, the
 *    resolver the saving nodes use too.
 *  - Nothing here keeps state; safe from any thread. */
#ifndef KN_WEB_FILES_H
#define KN_WEB_FILES_H

#include <stdbool.h>
#include <stddef.h>

#include "kernels/error.h"

bool kn_web_name_ok(const char *name);
bool kn_web_subfolder_ok(const char *subfolder);

/* Opens root/subfolder (creating missing components with mode 0755 when
 * `create`) and returns its directory descriptor in *dirfd (close() it). */
int kn_web_open_dir(const char *root, const char *subfolder, bool create, int *dirfd, kn_err *err);

/* Opens the regular file `name` of root/subfolder for reading: *fd (close()
 * it) and its size. */
int kn_web_open_file(const char *root, const char *subfolder, const char *name, int *fd, size_t *size,
                     kn_err *err);

/* Stores an upload as ComfyUI's /upload/image does: into root/subfolder
 * (created), under `name` unless that file exists and `overwrite` is false:
 * then an existing file with the same bytes is reused, otherwise the first
 * free "<stem> (k)<ext>" is taken. The stored name is written to final
 * (at least 256 bytes). Never writes through a symlink. */
int kn_web_store_upload(const char *root, const char *subfolder, const char *name, const void *data, size_t len,
                        bool overwrite, char *final, size_t final_len, kn_err *err);

#endif
