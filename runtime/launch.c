/* MPI launches of kiln run / serve: see launch.h. */
#include "runtime/launch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT_S 120.0

void kn_launch_init(kn_launch *l) { *l = (kn_launch){KN_SP_AUTO, 0, DEFAULT_TIMEOUT_S, NULL, NULL, 0, 1}; }

int kn_launch_option(kn_launch *l, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    if (strcmp(a, "--sp") != 0 && strcmp(a, "--sp-ulysses") != 0 && strcmp(a, "--sp-timeout") != 0) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "kiln: %s needs a value\n", a);
        return -1;
    }
    const char *v = argv[++*i];
    char *end;
    if (strcmp(a, "--sp") == 0) {
        if (kn_sp_mode_parse(v, &l->mode) == KN_OK) return 1;
    } else if (strcmp(a, "--sp-ulysses") == 0) {
        long u = strtol(v, &end, 10);
        if (!*end && u >= 1 && u <= 4096) {
            l->ulysses = (int)u;
            return 1;
        }
    } else {
        double t = strtod(v, &end);
        if (!*end && t >= 0) {
            l->timeout_s = t;
            return 1;
        }
    }
    fprintf(stderr, "kiln: bad value '%s' for %s\n", v, a);
    return -1;
}

int kn_launch_start(kn_launch *l, const char *launch, kn_err *err) {
    KN_TRY(kn_comm_world(&l->world, err));
    l->rank = kn_comm_rank(l->world);
    l->size = kn_comm_size(l->world);
    kn_comm_set_timeout(l->world, l->timeout_s);
    if (l->size == 1) return KN_OK;
    KN_TRY(kn_ranks_new(&l->ranks, l->world, l->mode, l->ulysses, err));
    /* ranks splitting attention differently would wait on each other's collectives */
    size_t n = strlen(launch) + 64;
    char *what = malloc(n);
    if (!what) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    snprintf(what, n, "%s sp=%s ulysses=%d", launch, kn_sp_mode_name(l->mode), l->ulysses);
    int rc = kn_ranks_hello(l->ranks, what, err);
    free(what);
    if (!rc && l->rank == 0)
        fprintf(stderr, "kiln: %d ranks (%s), DiT attention split %s%s\n", l->size, kn_comm_kind(l->world),
                kn_sp_mode_name(l->mode), l->ulysses ? " with a set Ulysses degree" : "");
    return rc;
}

int kn_launch_follow(kn_launch *l, kn_precision precision) {
    kn_ctx ctx;
    kn_err err;
    kn_err_clear(&err);
    if (kn_ctx_init(&ctx, KN_DEV_CPU, precision)) {
        fprintf(stderr, "kiln rank %d: cannot create the compute context\n", l->rank);
        return kn_launch_end(l, 1);
    }
    int rc = kn_ranks_follow(l->ranks, &ctx, &err);
    if (rc) fprintf(stderr, "kiln rank %d: %s\n", l->rank, err.msg);
    kn_ctx_free(&ctx);
    return kn_launch_end(l, rc ? 1 : 0);
}

int kn_launch_end(kn_launch *l, int status) {
    int abandoned = l->world && (kn_comm_broken(l->world) || (l->ranks && kn_ranks_lost(l->ranks)));
    if (l->ranks && l->rank == 0) kn_ranks_quit(l->ranks);
    kn_ranks_free(l->ranks);
    l->ranks = NULL;
    if (abandoned) {
        /* the other ranks may wait in a collective forever: end the launch */
        fprintf(stderr, "kiln rank %d: ending the launch\n", l->rank);
        kn_comm_abort(l->world, status ? status : 1);
    }
    kn_comm_free(l->world);
    l->world = NULL;
    return status;
}

int kn_parse_size(const char *text, uint64_t *bytes) {
    char *end;
    double v = strtod(text, &end);
    static const char units[] = "KMGT";
    const char *u = *end ? strchr(units, *end) : NULL;
    double scale = u ? (double)((uint64_t)1 << (10 * (u - units + 1))) : 1.0;
    if (u) end++;
    if (end == text || *end || !(v > 0) || v * scale >= 18446744073709551616.0) return -1;
    *bytes = (uint64_t)(v * scale);
    return 0;
}
