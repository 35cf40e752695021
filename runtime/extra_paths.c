/* ComfyUI's extra_model_paths.yaml, as far as kiln serve reads it: see runtime/extra_paths.h. */
#include "runtime/extra_paths.h"

#include <stdlib.h>
#include <string.h>

/* The model folder keys a ComfyUI extra_model_paths.yaml section may name,
 * each with the sub-folders of a Kiln models root it can stand for. */
static const char *const yaml_folders[][3] = {
    {"checkpoints", "checkpoints", NULL},  {"diffusion_models", "diffusion_models", "unet"},
    {"unet", "unet", "diffusion_models"},  {"text_encoders", "text_encoders", "clip"},
    {"clip", "clip", "text_encoders"},     {"vae", "vae", NULL},
    {"loras", "loras", NULL},
};

/* Folder path `path` (relative to base) names sub-folder `sub` of a models
 * root: returns that root's length within path, or -1. */
static int root_of(const char *path, const char *const *subs) {
    size_t n = strlen(path);
    while (n > 0 && path[n - 1] == '/') n--;
    for (int k = 1; k < 3 && subs[k]; k++) {
        size_t sl = strlen(subs[k]);
        if (n >= sl && strncmp(path + n - sl, subs[k], sl) == 0 && (n == sl || path[n - sl - 1] == '/'))
            return (int)(n - sl);
    }
    return -1;
}

int kn_extra_paths_root(FILE *f, const char *file, char **root, kn_err *err) {
    *root = NULL;
    char line[4096], base[4096] = "", found[4096] = "", key[128] = "";
    int rc = KN_OK, lineno = 0, in_block = 0, have = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t')) line[--n] = '\0';
        size_t indent = strspn(line, " \t");
        char *t = line + indent;
        if (!*t) continue;
        const char *path = NULL;
        if (indent == 0) { /* a new section */
            if (t[strlen(t) - 1] != ':') rc = kn_fail(err, KN_ERR_FORMAT, "%s:%d: expected 'section:'", file, lineno);
            base[0] = '\0';
            in_block = 0;
            continue;
        }
        if (in_block && indent > (size_t)in_block) {
            path = t;
        } else {
            char *colon = strchr(t, ':');
            if (!colon) {
                rc = kn_fail(err, KN_ERR_FORMAT, "%s:%d: expected 'key: value'", file, lineno);
                break;
            }
            *colon = '\0';
            snprintf(key, sizeof key, "%s", t);
            char *v = colon + 1 + strspn(colon + 1, " \t");
            in_block = 0;
            if (strcmp(v, "|") == 0) {
                in_block = (int)indent;
                continue;
            }
            if (strcmp(key, "base_path") == 0) snprintf(base, sizeof base, "%s", v);
            else if (strcmp(key, "is_default") != 0) path = v;
        }
        if (!path) continue;
        int k = -1;
        for (int i = 0; i < (int)(sizeof yaml_folders / sizeof yaml_folders[0]); i++)
            if (strcmp(yaml_folders[i][0], key) == 0) k = i;
        if (k < 0) continue; /* folders Kiln has no nodes for (controlnet, upscale_models, ...) */
        int rl = root_of(path, yaml_folders[k]);
        char cand[8192];
        if (rl < 0) {
            rc = kn_fail(err, KN_ERR_UNSUPPORTED, "%s:%d: '%s: %s' is not <models root>/%s; kiln serve reads one models root",
                         file, lineno, key, path, key);
            break;
        }
        size_t bl = strlen(base);
        snprintf(cand, sizeof cand, "%s%s%.*s", base, bl && base[bl - 1] != '/' && rl ? "/" : "", rl, path);
        size_t cl = strlen(cand);
        while (cl > 1 && cand[cl - 1] == '/') cand[--cl] = '\0';
        if (!cl) snprintf(cand, sizeof cand, ".");
        if (have && strcmp(cand, found) != 0) {
            rc = kn_fail(err, KN_ERR_UNSUPPORTED, "%s:%d: a second models root '%s' (first '%s'); kiln serve reads one",
                         file, lineno, cand, found);
            break;
        }
        snprintf(found, sizeof found, "%s", cand);
        have = 1;
    }
    if (!rc && !have) rc = kn_fail(err, KN_ERR_NOT_FOUND, "%s names no model folder Kiln uses", file);
    if (!rc && !(*root = strdup(found))) rc = kn_fail(err, KN_ERR_NOMEM, "out of memory");
    return rc;
}

int kn_extra_paths_root_file(const char *file, char **root, kn_err *err) {
    *root = NULL;
    FILE *f = fopen(file, "r");
    if (!f) return kn_fail(err, KN_ERR_IO, "cannot open '%s'", file);
    int rc = kn_extra_paths_root(f, file, root, err);
    fclose(f);
    return rc;
}
