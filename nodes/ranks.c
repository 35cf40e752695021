/* The leader / follower protocol of ranks.h over the launch's communicator.
 * Every message is a broadcast from rank 0: a fixed command header, then its
 * payload; replies are an all_gather of fixed-size statuses. */
#include "nodes/ranks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sha256.h"

enum { CMD_QUIT = 1, CMD_MODEL, CMD_FORWARD };

typedef struct wire_cmd {
    int32_t cmd, n_refs, ref_method, reserved;
    int64_t bytes; /* MODEL: the description's length */
} wire_cmd;

typedef struct wire_tensor {
    int32_t present, dtype, ndim, reserved;
    int64_t ne[KN_MAX_DIMS];
} wire_tensor;

#define STATUS_MSG 500
typedef struct wire_status {
    int32_t code;
    char msg[STATUS_MSG];
} wire_status;

/* the forward's inputs in wire order; refs follow */
enum { IN_X, IN_TIMESTEP, IN_CONTEXT, IN_MASK, IN_POOLED, IN_GUIDANCE, IN_FIXED };
#define MAX_REFS 8
#define LOAD_TIMEOUT_FACTOR 10 /* a follower maps and checks a whole model file */

typedef struct follower_lora {
    char *path;
    kn_lora *lora;
} follower_lora;

struct kn_ranks {
    kn_comm *world; /* borrowed */
    kn_sp *sp;
    int rank, size, lost;
    char *agreed; /* leader: the model description every rank holds, NULL: none yet */
    /* follower: its copy of the model */
    char *desc, *dit_path;
    kn_dtype dtype;
    kn_st_file *file;
    kn_dit *dit;
    kn_lora_model *table;
    follower_lora *loras;
    int n_loras;
};

int kn_ranks_new(kn_ranks **out, kn_comm *world, kn_sp_mode mode, int ulysses, kn_err *err) {
    kn_ranks *r = calloc(1, sizeof *r);
    if (!r) return kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    r->world = world;
    r->rank = kn_comm_rank(world);
    r->size = kn_comm_size(world);
    if (kn_sp_new(&r->sp, world, mode, ulysses, err)) {
        free(r);
        return err->code;
    }
    *out = r;
    return KN_OK;
}

static void drop_model(kn_ranks *r) {
    for (int i = 0; i < r->n_loras; i++) {
        kn_lora_free(r->loras[i].lora);
        free(r->loras[i].path);
    }
    free(r->loras);
    r->loras = NULL;
    r->n_loras = 0;
    kn_lora_model_free(r->table); /* restores the table's slots before the DiT goes */
    r->table = NULL;
    kn_dit_free(r->dit);
    r->dit = NULL;
    kn_st_close(r->file);
    r->file = NULL;
    free(r->dit_path);
    free(r->desc);
    r->dit_path = r->desc = NULL;
}

void kn_ranks_free(kn_ranks *r) {
    if (!r) return;
    drop_model(r);
    free(r->agreed);
    kn_sp_free(r->sp);
    free(r);
}

int kn_ranks_size(const kn_ranks *r) { return r->size; }
int kn_ranks_is_leader(const kn_ranks *r) { return r->rank == 0; }
int kn_ranks_lost(const kn_ranks *r) { return r->lost; }

/* ---- statuses -------------------------------------------------------------------- */

/* Every rank's (code, message) to every rank; the first failure (lowest rank) into err. */
static int exchange_status(kn_ranks *r, int code, const char *msg, kn_err *err) {
    wire_status mine = {code, {0}};
    snprintf(mine.msg, sizeof mine.msg, "%s", code ? msg : "");
    wire_status *all = calloc((size_t)r->size, sizeof *all);
    if (!all) return kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    int rc = kn_comm_all_gather(r->world, &mine, all, sizeof mine, err);
    for (int i = 0; !rc && i < r->size; i++)
        if (all[i].code) {
            all[i].msg[STATUS_MSG - 1] = '\0';
            rc = kn_fail(err, all[i].code, "rank %d: %s", i, all[i].msg);
        }
    free(all);
    return rc;
}

int kn_ranks_hello(kn_ranks *r, const char *launch, kn_err *err) {
    size_t n = strlen(launch) + 1, max = 0;
    int64_t *lens = calloc((size_t)r->size, sizeof *lens);
    if (!lens) return kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    int rc = kn_comm_all_gather(r->world, &(int64_t){(int64_t)n}, lens, sizeof(int64_t), err);
    for (int i = 0; !rc && i < r->size; i++) max = (size_t)lens[i] > max ? (size_t)lens[i] : max;
    free(lens);
    char *mine = rc ? NULL : calloc(1, max), *all = rc ? NULL : calloc((size_t)r->size, max);
    if (!rc && (!mine || !all)) rc = kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    if (!rc) {
        memcpy(mine, launch, n);
        rc = kn_comm_all_gather(r->world, mine, all, max, err);
    }
    for (int i = 1; !rc && i < r->size; i++)
        if (strcmp(all + (size_t)i * max, all) != 0)
            rc = kn_fail(err, KN_ERR_INVALID, "rank %d was launched differently from rank 0: [%s] vs [%s]", i,
                         all + (size_t)i * max, all);
    free(mine);
    free(all);
    return rc;
}

/* ---- the model a forward runs ------------------------------------------------------- */

/* What tells two copies of a model file apart without reading it all: its
 * tensor table, its size, and its first and last 64 KiB. */
static void file_identity(const kn_st_file *f, char hex[KN_SHA256_HEX]) {
    kn_sha256 s;
    kn_sha256_init(&s);
    for (int i = 0; i < kn_st_count(f); i++) {
        const kn_tensor *t = kn_st_at(f, i);
        kn_sha256_update(&s, t->name, strlen(t->name) + 1);
        kn_sha256_update(&s, &t->dtype, sizeof t->dtype);
        kn_sha256_update(&s, t->ne, (size_t)t->ndim * sizeof t->ne[0]);
    }
    size_t len = 0, edge = 65536;
    const unsigned char *data = kn_st_data(f, &len);
    kn_sha256_update(&s, &len, sizeof len);
    if (data && len) {
        size_t head = len < edge ? len : edge;
        kn_sha256_update(&s, data, head);
        kn_sha256_update(&s, data + len - head, head);
    }
    unsigned char digest[32];
    kn_sha256_final(&s, digest);
    kn_sha256_hex(digest, hex);
}

/* The leader's description of model: {"dit", "id", "dtype", "loras": [[path, strength]...]}. */
static char *describe(const kn_model_obj *model, kn_err *err) {
    const kn_dit_weights *w = model->weights;
    char id[KN_SHA256_HEX];
    file_identity(w->file, id);
    json_t *loras = json_array();
    for (int i = 0; loras && i < kn_model_lora_count(model); i++) {
        const char *path;
        double strength;
        kn_model_lora_at(model, i, &path, &strength);
        json_array_append_new(loras, json_pack("[sf]", path, strength));
    }
    json_t *j = loras ? json_pack("{s:s, s:s, s:s, s:o}", "dit", kn_st_path(w->file), "id", id, "dtype",
                                  w->dtype < KN_DTYPE_COUNT ? kn_dtype_name(w->dtype) : "stored", "loras", loras)
                      : NULL;
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!s) kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    return s;
}

static int dtype_named(const char *name, kn_dtype *out) {
    *out = KN_DTYPE_COUNT;
    if (strcmp(name, "stored") == 0) return KN_OK;
    for (int d = 0; d < KN_DTYPE_COUNT; d++)
        if (strcmp(kn_dtype_name((kn_dtype)d), name) == 0) {
            *out = (kn_dtype)d;
            return KN_OK;
        }
    return KN_ERR_INVALID;
}

/* Follower: the DiT file, checked against the leader's identity, stored as dtype. */
static int load_dit(kn_ranks *r, const char *path, const char *id, kn_dtype dtype, kn_err *err) {
    char mine[KN_SHA256_HEX];
    drop_model(r);
    if (!(r->dit_path = strdup(path))) return kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    r->dtype = dtype;
    KN_TRY(kn_st_open(&r->file, path, err));
    file_identity(r->file, mine);
    if (strcmp(mine, id) != 0)
        return kn_fail(err, KN_ERR_INVALID, "%s is not the file rank 0 loaded under that name (its tensors or data "
                                            "differ)", path);
    KN_TRY(kn_dit_load(&r->dit, r->file, err));
    if (dtype != KN_DTYPE_COUNT) KN_TRY(kn_weight_table_convert(r->dit->weights, dtype, err));
    return KN_OK;
}

static int follower_lora_of(kn_ranks *r, const char *path, const kn_lora **out, kn_err *err) {
    for (int i = 0; i < r->n_loras; i++)
        if (strcmp(r->loras[i].path, path) == 0) {
            *out = r->loras[i].lora;
            return KN_OK;
        }
    if (!r->table) {
        const kn_dit_family *f = r->dit->family;
        KN_TRY(kn_lora_model_from_table(&r->table, f->lora_keys, f->n_lora_keys, r->dit->weights, err));
    }
    follower_lora *grown = realloc(r->loras, (size_t)(r->n_loras + 1) * sizeof *grown);
    if (!grown) return kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    r->loras = grown;
    follower_lora *l = &r->loras[r->n_loras];
    *l = (follower_lora){strdup(path), NULL};
    if (!l->path) return kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    if (kn_lora_load(&l->lora, path, r->table, err)) {
        free(l->path);
        return err->code;
    }
    r->n_loras++;
    *out = l->lora;
    return KN_OK;
}

/* Follower: makes its model the one `desc` describes. */
static int apply_model(kn_ranks *r, const char *desc, kn_err *err) {
    json_error_t je;
    json_t *j = json_loads(desc, 0, &je), *loras = NULL;
    const char *path = NULL, *id = NULL, *dtype_name = NULL;
    kn_dtype dtype;
    if (!j || json_unpack(j, "{s:s, s:s, s:s, s:o}", "dit", &path, "id", &id, "dtype", &dtype_name, "loras", &loras) ||
        dtype_named(dtype_name, &dtype) || !json_is_array(loras) || json_array_size(loras) > 64) {
        json_decref(j);
        return kn_fail(err, KN_ERR_FORMAT, "a model description this rank cannot read");
    }
    int rc = KN_OK;
    if (!r->dit || strcmp(r->dit_path, path) != 0 || r->dtype != dtype) rc = load_dit(r, path, id, dtype, err);
    kn_lora_use use[64];
    size_t n = json_array_size(loras);
    for (size_t i = 0; !rc && i < n; i++) {
        const char *lp;
        double strength;
        if (json_unpack(json_array_get(loras, i), "[sf]", &lp, &strength)) rc = kn_fail(err, KN_ERR_FORMAT, "bad LoRA");
        else if (!(rc = follower_lora_of(r, lp, &use[i].lora, err))) use[i].strength = strength;
    }
    if (!rc && r->table) rc = kn_lora_model_apply(r->table, use, (int)n, NULL, err); /* n == 0: restores */
    if (!rc) {
        free(r->desc);
        if (!(r->desc = strdup(desc))) rc = kn_fail(err, KN_ERR_NOMEM, "ranks: out of memory");
    }
    if (rc) drop_model(r); /* a half-made model must not serve the next command */
    json_decref(j);
    return rc;
}

/* ---- forwards ------------------------------------------------------------------------- */

static const kn_tensor *input_at(const kn_dit_input *in, int i) {
    const kn_tensor *fixed[IN_FIXED] = {in->x, in->timestep, in->context, in->context_mask, in->pooled, in->guidance};
    return i < IN_FIXED ? fixed[i] : in->refs[i - IN_FIXED];
}

/* Leader: the inputs' shapes, then their data. */
static int send_inputs(kn_ranks *r, const kn_dit_input *in, kn_err *err) {
    int n = IN_FIXED + in->n_refs;
    wire_tensor desc[IN_FIXED + MAX_REFS];
    memset(desc, 0, sizeof desc);
    for (int i = 0; i < n; i++) {
        const kn_tensor *t = input_at(in, i);
        if (!t) continue;
        if (!kn_tensor_is_contiguous(t) || t->device != KN_DEV_CPU)
            return kn_fail(err, KN_ERR_SHAPE, "ranks: forward inputs must be contiguous CPU tensors");
        desc[i] = (wire_tensor){1, (int32_t)t->dtype, t->ndim, 0, {0}};
        memcpy(desc[i].ne, t->ne, sizeof desc[i].ne);
    }
    KN_TRY(kn_comm_broadcast(r->world, desc, (size_t)n * sizeof desc[0], 0, err));
    for (int i = 0; i < n; i++) {
        const kn_tensor *t = input_at(in, i);
        if (t) KN_TRY(kn_comm_broadcast(r->world, t->data, kn_tensor_nbytes(t), 0, err));
    }
    return KN_OK;
}

/* Follower: the leader's inputs into owned tensors t[0..n). */
static int receive_inputs(kn_ranks *r, int n, kn_tensor *t, kn_err *err) {
    wire_tensor desc[IN_FIXED + MAX_REFS];
    KN_TRY(kn_comm_broadcast(r->world, desc, (size_t)n * sizeof desc[0], 0, err));
    for (int i = 0; i < n; i++) {
        if (!desc[i].present) continue;
        if (desc[i].ndim < 1 || desc[i].ndim > KN_MAX_DIMS || desc[i].dtype < 0 || desc[i].dtype >= KN_DTYPE_COUNT)
            return kn_fail(err, KN_ERR_FORMAT, "an input this rank cannot read");
        KN_TRY(kn_tensor_new(&t[i], (kn_dtype)desc[i].dtype, KN_DEV_CPU, desc[i].ndim, desc[i].ne, err));
        KN_TRY(kn_comm_broadcast(r->world, t[i].data, kn_tensor_nbytes(&t[i]), 0, err));
    }
    return KN_OK;
}

static int follow_forward(kn_ranks *r, kn_ctx *ctx, const wire_cmd *cmd, kn_err *err) {
    int n = IN_FIXED + cmd->n_refs;
    if (cmd->n_refs < 0 || cmd->n_refs > MAX_REFS) return kn_fail(err, KN_ERR_FORMAT, "bad forward command");
    kn_tensor t[IN_FIXED + MAX_REFS], out = {0};
    memset(t, 0, sizeof t);
    int rc = receive_inputs(r, n, t, err);
    /* the forward runs even when this rank cannot: its collectives must match
     * the others'; a rank without a model reports that in the status */
    const kn_tensor *refs[MAX_REFS];
    for (int i = 0; i < cmd->n_refs; i++) refs[i] = &t[IN_FIXED + i];
    kn_dit_input in = {&t[IN_X], &t[IN_TIMESTEP], &t[IN_CONTEXT], t[IN_MASK].data ? &t[IN_MASK] : NULL,
                       t[IN_POOLED].data ? &t[IN_POOLED] : NULL, t[IN_GUIDANCE].data ? &t[IN_GUIDANCE] : NULL,
                       refs, cmd->n_refs, cmd->ref_method, r->sp};
    if (!rc && !r->dit) rc = kn_fail(err, KN_ERR_INVALID, "no model loaded");
    if (!rc) {
        int64_t ne[KN_MAX_DIMS];
        memcpy(ne, t[IN_X].ne, sizeof ne);
        ne[1] = r->dit->channels;
        rc = kn_tensor_new(&out, KN_F32, KN_DEV_CPU, t[IN_X].ndim, ne, err);
    }
    if (!rc && kn_dit_forward(ctx, r->dit, &in, &out, NULL, NULL)) rc = kn_fail(err, ctx->err.code, "%s", ctx->err.msg);
    for (int i = 0; i < n; i++) kn_tensor_free(&t[i]);
    kn_tensor_free(&out);
    if (rc == KN_ERR_COMM) return rc;
    kn_err status;
    kn_err_clear(&status);
    return exchange_status(r, rc, err->msg, &status) == KN_ERR_COMM ? (*err = status, KN_ERR_COMM) : KN_OK;
}

int kn_ranks_follow(kn_ranks *r, kn_ctx *ctx, kn_err *err) {
    double timeout = kn_comm_timeout(r->world);
    for (;;) {
        wire_cmd cmd;
        kn_comm_set_timeout(r->world, 0); /* the leader may idle for hours between renders */
        int rc = kn_comm_broadcast(r->world, &cmd, sizeof cmd, 0, err);
        kn_comm_set_timeout(r->world, timeout);
        if (rc) return rc;
        if (cmd.cmd == CMD_QUIT) return KN_OK;
        if (cmd.cmd == CMD_MODEL) {
            char *desc = cmd.bytes > 0 && cmd.bytes < (1 << 24) ? calloc(1, (size_t)cmd.bytes + 1) : NULL;
            if (!desc) return kn_fail(err, KN_ERR_FORMAT, "bad model command");
            kn_err e;
            kn_err_clear(&e);
            rc = kn_comm_broadcast(r->world, desc, (size_t)cmd.bytes, 0, err);
            if (!rc) {
                int arc = apply_model(r, desc, &e);
                kn_comm_set_timeout(r->world, timeout * LOAD_TIMEOUT_FACTOR);
                rc = exchange_status(r, arc, e.msg, err);
                kn_comm_set_timeout(r->world, timeout);
                if (rc != KN_ERR_COMM) rc = KN_OK; /* a failed load was reported; the leader decides */
            }
            free(desc);
        } else if (cmd.cmd == CMD_FORWARD) {
            kn_err e;
            kn_err_clear(&e);
            rc = follow_forward(r, ctx, &cmd, &e);
            if (rc) *err = e;
        } else {
            return kn_fail(err, KN_ERR_FORMAT, "unknown command %d from rank 0", cmd.cmd);
        }
        if (rc) return rc;
    }
}

/* Leader: after a communication failure the followers' state is unknown. */
static int lose(kn_ranks *r, kn_err *err) {
    r->lost = 1;
    return kn_err_wrap(err, "sequence parallel across %d ranks failed; this and later renders run on rank 0 alone",
                       r->size);
}

static int send_model(kn_ranks *r, const kn_model_obj *model, kn_err *err) {
    char *desc = describe(model, err);
    if (!desc) return err->code;
    if (r->agreed && strcmp(desc, r->agreed) == 0) {
        free(desc);
        return KN_OK;
    }
    free(r->agreed);
    r->agreed = NULL;
    wire_cmd cmd = {CMD_MODEL, 0, 0, 0, (int64_t)strlen(desc)};
    int rc = kn_comm_broadcast(r->world, &cmd, sizeof cmd, 0, err);
    if (!rc) rc = kn_comm_broadcast(r->world, desc, strlen(desc), 0, err);
    double timeout = kn_comm_timeout(r->world);
    kn_comm_set_timeout(r->world, timeout * LOAD_TIMEOUT_FACTOR);
    if (!rc) rc = exchange_status(r, KN_OK, "", err);
    kn_comm_set_timeout(r->world, timeout);
    if (!rc) r->agreed = desc;
    else free(desc);
    return rc;
}

int kn_ranks_forward(kn_ranks *r, kn_ctx *ctx, const kn_model_obj *model, const kn_dit *dit, const kn_dit_input *in,
                     kn_tensor *out, kn_err *err) {
    if (r->lost) {
        if (kn_dit_forward(ctx, dit, in, out, NULL, NULL)) *err = ctx->err;
        return err->code;
    }
    if (in->n_refs > MAX_REFS) return kn_fail(err, KN_ERR_UNSUPPORTED, "ranks: more than %d reference latents", MAX_REFS);
    int rc = send_model(r, model, err);
    if (rc) return rc == KN_ERR_COMM ? lose(r, err) : rc;
    wire_cmd cmd = {CMD_FORWARD, in->n_refs, in->ref_method, 0, 0};
    rc = kn_comm_broadcast(r->world, &cmd, sizeof cmd, 0, err);
    if (!rc) rc = send_inputs(r, in, err);
    if (rc) return rc == KN_ERR_COMM ? lose(r, err) : rc;
    kn_dit_input sharded = *in;
    sharded.sp = r->sp;
    int frc = kn_dit_forward(ctx, dit, &sharded, out, NULL, NULL);
    if (frc == KN_ERR_COMM) {
        *err = ctx->err;
        return lose(r, err);
    }
    rc = exchange_status(r, frc, ctx->err.msg, err);
    return rc == KN_ERR_COMM ? lose(r, err) : rc;
}

void kn_ranks_quit(kn_ranks *r) {
    if (!r || r->lost || r->rank != 0) return;
    kn_err err;
    wire_cmd cmd = {CMD_QUIT, 0, 0, 0, 0};
    if (kn_comm_broadcast(r->world, &cmd, sizeof cmd, 0, &err)) r->lost = 1;
}
