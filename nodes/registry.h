/* kn_registry: the ComfyUI node classes Kiln supports, with their schemas in
 * ComfyUI's own terms. This table is the single source of truth for the UI->API
 * converter (widget order), the validator (input types, ranges, choices) and
 * GET /object_info (which must equal ComfyUI's for these classes:
 * tests/fixtures/workflows/object_info.json). It holds classes Kiln cannot
 * run yet too, so every shared workflow converts; whether a class runs is
 * nodes/node.h's kn_node_exec_find, and /object_info lists only those.
 *
 * Contract:
 *  - Classes and their inputs are static const data; lookups never allocate.
 *    Inputs are listed in ComfyUI's input_order: required ones, then optional.
 *  - An input is a widget (INT, FLOAT, STRING, BOOLEAN, COMBO: a constant in
 *    the prompt) or a socket (LINK: ["node_id", output_index] of an output
 *    whose type matches `type`). INT and FLOAT inputs always carry default, min
 *    and max (every ComfyUI numeric input here does); `step`/`round` are
 *    reported when non-zero.
 *  - A COMBO's choices are `options` (fixed), or for file-name inputs the files
 *    of the model folder `folder` ("diffusion_models", "text_encoders", "vae",
 *    "loras", "checkpoints", "input" for images, "input_latents" for .latent
 *    files) followed by `options` (VAELoader's
 *    "pixel_space"). The registry never touches the filesystem: callers pass a
 *    kn_folder_lister that lists a folder; without one, folder choices are
 *    unknown (object_info shows only the fixed ones, validation skips the check).
 *  - `style` selects which of ComfyUI's two object_info layouts a class uses:
 *    V1 (classic nodes: sockets without options written ["MODEL"], optional
 *    keys only when set) or V3 (io.ComfyNode: every key present, unset ones
 *    null, combos written ["COMBO", {"multiselect": false, "options": [..]}]).
 *  - `impl` is reserved for the executor: the node's kn_node_exec_fn. Its
 *    signature belongs to the runtime, so the registry stores it as a generic
 *    function pointer (kn_node_impl; C allows casting it back to the real
 *    type) and every entry is NULL until the runtime's owner fills the tables.
 *  - kn_registry_object_info / kn_registry_input_config return new jansson
 *    references (NULL + err on failure: out of memory, or the lister's error). */
#ifndef KN_NODES_REGISTRY_H
#define KN_NODES_REGISTRY_H

#include <stdbool.h>

#include <jansson.h>

#include "kernels/error.h"

/* ComfyUI's seed range ends at 0xffffffffffffffff, which a double rounds to
 * 2^64; kn_input_max_exceeded and the formatters treat this value as 2^64 - 1. */
#define KN_SEED_MAX 18446744073709551616.0

typedef enum kn_input_kind {
    KN_INPUT_LINK = 0, /* socket: fed by another node's output */
    KN_INPUT_INT,
    KN_INPUT_FLOAT,
    KN_INPUT_STRING,
    KN_INPUT_BOOLEAN,
    KN_INPUT_COMBO,
} kn_input_kind;

typedef enum kn_input_section { KN_SECTION_REQUIRED = 0, KN_SECTION_OPTIONAL } kn_input_section;

typedef enum kn_schema_style { KN_SCHEMA_V1 = 0, KN_SCHEMA_V3 } kn_schema_style;

/* Option flags, each reported as `"<key>": true` in the input's options. */
enum {
    KN_INPUT_CONTROL_AFTER_GENERATE = 1 << 0, /* front end adds a seed-control widget after it */
    KN_INPUT_IMAGE_UPLOAD = 1 << 1,           /* front end adds an "upload" button widget */
    KN_INPUT_ADVANCED = 1 << 2,
    KN_INPUT_MULTILINE = 1 << 3,
    KN_INPUT_DYNAMIC_PROMPTS = 1 << 4,
    /* Not in object_info: the class's VALIDATE_INPUTS checks that the file
     * exists (custom_validation_failed) instead of the choice-list check. */
    KN_INPUT_FILE_EXISTS = 1 << 5,
};

typedef struct kn_input_spec {
    const char *name;
    kn_input_kind kind;
    kn_input_section section;
    const char *type;            /* LINK: the type name ("MODEL", "IMAGE", ...) */
    double def, min, max;        /* INT, FLOAT; BOOLEAN: def only (0 or 1) */
    double step, round;          /* INT, FLOAT; 0 = not set */
    const char *def_str;         /* STRING: default text; NULL = not set */
    const char *const *options;  /* COMBO: fixed choices, NULL-terminated */
    const char *folder;          /* COMBO: model folder whose files come first */
    unsigned flags;              /* KN_INPUT_* option flags */
    const char *tooltip;         /* NULL = not set */
} kn_input_spec;

/* Placeholder type for a class's implementation (see `impl` above). */
typedef void (*kn_node_impl)(void);

typedef struct kn_output_spec {
    const char *type;
    const char *name; /* NULL = same as type */
} kn_output_spec;

typedef struct kn_node_class {
    const char *name;
    const char *display_name; /* NULL: none (V3 reports null; the front end shows name) */
    const char *category;
    const char *description;
    const char *python_module;
    kn_schema_style style;
    const kn_input_spec *inputs;
    int n_inputs;
    const kn_output_spec *outputs;
    int n_outputs;
    const char *const *hidden;          /* name/type pairs, NULL-terminated; NULL = none */
    const char *const *output_tooltips; /* NULL-terminated; NULL = key absent (V1), all null (V3) */
    const char *const *search_aliases;  /* NULL-terminated; NULL = JSON null (V3) */
    bool output_node;                   /* ComfyUI OUTPUT_NODE: what a prompt runs for */
    bool experimental;                  /* V3 only */
    kn_node_impl impl;                  /* the kn_node_exec_fn, cast; NULL until implemented */
} kn_node_class;

/* Lists the file names of a model folder (relative paths, '/' separators,
 * sorted as ComfyUI sorts them) by appending JSON strings to `names`. */
typedef struct kn_folder_lister {
    int (*list)(void *user, const char *folder, json_t *names, kn_err *err);
    void *user;
} kn_folder_lister;

int kn_registry_count(void);
const kn_node_class *kn_registry_at(int i);
const kn_node_class *kn_registry_find(const char *class_type); /* NULL if unknown */
const kn_input_spec *kn_node_input(const kn_node_class *cls, const char *name); /* NULL if none */
const char *kn_node_title(const kn_node_class *cls); /* display_name, else name */
const char *kn_output_name(const kn_output_spec *out);

/* True when a value is above the input's max (INT and FLOAT only). */
bool kn_input_max_exceeded(const kn_input_spec *in, double v);
/* The input's bound as ComfyUI prints it: INT as an integer, FLOAT as a Python float. */
void kn_input_format_bound(const kn_input_spec *in, double bound, char *buf, size_t len);

/* A COMBO's current choices (JSON array of strings). Without a lister, folder
 * choices are left out and *complete is set to false. */
json_t *kn_registry_combo_options(const kn_input_spec *in, const kn_folder_lister *lister,
                                  bool *complete, kn_err *err);
/* The input as ComfyUI's INPUT_TYPES spec, [type, options] (options {} when
 * none): the "input_config" of validation errors. */
json_t *kn_registry_input_config(const kn_node_class *cls, const kn_input_spec *in,
                                 const kn_folder_lister *lister, kn_err *err);
/* The class's GET /object_info entry. */
json_t *kn_registry_object_info(const kn_node_class *cls, const kn_folder_lister *lister, kn_err *err);

#endif
