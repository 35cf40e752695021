/* kiln convert [--no-validate] [--compact] WORKFLOW
 *
 * WORKFLOW is a file in either ComfyUI format ("-" reads stdin). Prints the
 * API prompt (UI files converted as the front end would) to stdout and exits
 * 0; with validation (the default) a prompt ComfyUI would refuse prints
 * {"error": ..., "node_errors": ...} to stdout instead, a one-line reason to
 * stderr, and exits 1. Usage errors exit 2. Validation runs without model
 * folders, so file-name choices are not checked here, and against the
 * schemas only: classes Kiln cannot run still convert (kiln run and the
 * server refuse them). */
#include "runtime/convert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/json.h"
#include "graph/validate.h"
#include "graph/workflow.h"

static int print_json(const json_t *v, int indent) {
    char *s = kn_json_dumps(v, indent);
    if (!s) {
        fprintf(stderr, "kiln convert: out of memory\n");
        return 1;
    }
    puts(s);
    free(s);
    return 0;
}

int kn_cmd_convert(int argc, char **argv) {
    int validate = 1, indent = 2;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: kiln convert [OPTION]... WORKFLOW.json|-\n"
                   "Print the API-format prompt ComfyUI's front end would send for a workflow file\n"
                   "(either format; - reads stdin), or ComfyUI's error JSON and exit 1.\n"
                   "  --no-validate   print the conversion without checking it against the node schemas\n"
                   "  --compact       one line instead of indented JSON\n"
                   "  -h, --help      this help\n");
            return 0;
        }
        if (strcmp(argv[i], "--no-validate") == 0) validate = 0;
        else if (strcmp(argv[i], "--compact") == 0) indent = 0;
        else if (!path && (argv[i][0] != '-' || strcmp(argv[i], "-") == 0)) path = argv[i];
        else {
            fprintf(stderr, "kiln convert: %s '%s' (kiln convert --help lists the options)\n",
                    argv[i][0] == '-' && argv[i][1] ? "unknown option" : "a second file", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "kiln convert: no workflow file given (kiln convert --help lists the options)\n");
        return 2;
    }
    kn_err err;
    kn_err_clear(&err);
    json_t *prompt = NULL, *error = NULL;
    if (kn_workflow_load_file(strcmp(path, "-") == 0 ? "/dev/stdin" : path, NULL, &prompt, &error, &err) != KN_OK) {
        fprintf(stderr, "kiln convert: %s\n", err.msg);
        int status = error ? print_json(error, indent) : 1;
        json_decref(error);
        return status ? status : 1;
    }
    int status = 0;
    if (validate) {
        /* Validation converts values in place; print what the front end sends. */
        json_t *copy = json_deep_copy(prompt);
        kn_validation v;
        int st = copy ? kn_validate_prompt(copy, NULL, NULL, NULL, &v, &err)
                      : kn_fail(&err, KN_ERR_NOMEM, "out of memory");
        if (st == KN_ERR_INVALID) {
            json_t *body = kn_validation_body(&v);
            fprintf(stderr, "kiln convert: %s\n", err.msg);
            status = body ? print_json(body, indent) : 1;
            json_decref(body);
            status = status ? status : 1;
        } else if (st != KN_OK) {
            fprintf(stderr, "kiln convert: %s\n", err.msg);
            status = 1;
        } else if (json_object_size(v.node_errors) > 0) {
            /* ComfyUI queues the outputs that validated and reports the rest. */
            char *ne = kn_json_dumps(v.node_errors, 0);
            fprintf(stderr, "kiln convert: some outputs failed validation: %s\n", ne ? ne : "(out of memory)");
            free(ne);
        }
        if (st == KN_OK || st == KN_ERR_INVALID) kn_validation_free(&v);
        json_decref(copy);
    }
    if (status == 0) status = print_json(prompt, indent);
    json_decref(prompt);
    return status;
}
