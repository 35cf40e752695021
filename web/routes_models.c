/* /view_metadata and /experiment/models: see web/routes_models.h. */
#include "web/routes_models.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define KN_HEADER_MAX ((uint64_t)100 << 20) /* safetensors' own cap on a header */

const char *const kn_model_folders[5] = {"checkpoints", "diffusion_models", "loras", "text_encoders", "vae"};

static bool known_folder(const char *f) {
    for (size_t i = 0; f && i < sizeof kn_model_folders / sizeof kn_model_folders[0]; i++)
        if (strcmp(f, kn_model_folders[i]) == 0) return true;
    return false;
}

/* The JSON header of a safetensors file (NULL when it is not one). */
static json_t *safetensors_header(const char *path) {
    FILE *f = fopen(path, "rb");
    unsigned char b[8];
    json_t *doc = NULL;
    if (f && fread(b, 1, 8, f) == 8) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
        char *text = n > 0 && n <= KN_HEADER_MAX ? malloc(n) : NULL;
        if (text && fread(text, 1, n, f) == n) doc = json_loadb(text, n, 0, NULL);
        free(text);
    }
    if (f) fclose(f);
    return doc;
}

int kn_route_view_metadata(const kn_http *h, kn_models *models) {
    char name[4096];
    if (!known_folder(h->param)) return kn_http_error(h, 404, "unknown model folder");
    if (kn_http_query(h, "filename", name, sizeof name) != 1 || !name[0])
        return kn_http_error(h, 404, "filename is required");
    char *path = NULL;
    kn_err err;
    if (kn_models_resolve(models, h->param, name, &path, &err)) return kn_http_fail(h, 404, &err);
    json_t *doc = strstr(name, ".safetensors") || strstr(name, ".sft") ? safetensors_header(path) : NULL;
    free(path);
    json_t *meta = json_object_get(doc, "__metadata__");
    if (!json_is_object(meta)) {
        json_decref(doc);
        return kn_http_error(h, 404, "'%s' has no metadata", name);
    }
    json_incref(meta);
    json_decref(doc);
    return kn_http_json(h, 200, meta);
}

int kn_route_experiment_models(const kn_http *h, kn_models *models) {
    if (!h->param) {
        json_t *list = json_array();
        for (size_t i = 0; i < sizeof kn_model_folders / sizeof kn_model_folders[0]; i++) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%s/%s", kn_models_root(models), kn_model_folders[i]);
            json_array_append_new(list, json_pack("{s:s, s:[s]}", "name", kn_model_folders[i], "folders", dir));
        }
        return kn_http_json(h, 200, list);
    }
    if (!known_folder(h->param)) return kn_http_error(h, 404, "unknown model folder");
    json_t *names = json_array(), *out = json_array();
    kn_err err;
    if (!names || !out || kn_models_list(models, h->param, names, &err)) {
        json_decref(names);
        json_decref(out);
        return kn_http_error(h, 500, "cannot list the folder");
    }
    size_t i;
    json_t *n;
    json_array_foreach(names, i, n) {
        char *path = NULL;
        struct stat st;
        if (kn_models_resolve(models, h->param, json_string_value(n), &path, &err) == 0 && stat(path, &st) == 0)
            json_array_append_new(out, json_pack("{s:O, s:i, s:f, s:f, s:I}", "name", n, "pathIndex", 0, "modified",
                                                 st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9, "created",
                                                 st.st_ctim.tv_sec + st.st_ctim.tv_nsec * 1e-9, "size",
                                                 (json_int_t)st.st_size));
        free(path);
    }
    json_decref(names);
    return kn_http_json(h, 200, out);
}
