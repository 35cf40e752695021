/* The front end's per-user storage: /userdata, /settings (ComfyUI's
 * app/user_manager.py and app/app_settings.py, notes/comfyui-api.md §7.3),
 * single-user mode: everything lives under <user_dir>/default/.
 *
 * Contract:
 *  - GET /userdata?dir=D[&recurse=true][&full_info=true][&split=true] lists
 *    the files under D (400 without dir, 404 when D is not there), sorted;
 *    GET /userdata/{file} sends a file; POST /userdata/{file}[?overwrite=
 *    false][&full_info=true] stores the raw body (409 when it exists and
 *    overwrite is false) and answers the path, or its info; DELETE removes
 *    it (204); POST /userdata/{file}/move/{dest} renames. {file} is the
 *    URL-encoded relative path ("workflows%2Fa.json").
 *  - GET /settings, GET /settings/{id}, POST /settings (an object merged in),
 *    POST /settings/{id} (any JSON value): comfy.settings.json in the user
 *    folder; GET of an unset id is null.
 *  - Client paths are never joined into file system paths: each is split
 *    into checked components (web/files.h rules), folders are walked with
 *    openat(O_NOFOLLOW) from the user folder, files read only when listed
 *    in their folder, written with O_NOFOLLOW. A path that fails the checks
 *    is 400; one that would leave the folder cannot be expressed.
 *  - Errors are JSON ({"error": "..."}). */
#ifndef KN_WEB_ROUTES_USER_H
#define KN_WEB_ROUTES_USER_H

#include "web/http.h"

int kn_route_userdata(const kn_http *h, const char *user_dir);
int kn_route_settings(const kn_http *h, const char *user_dir);

#endif
