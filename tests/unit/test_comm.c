/* kn_comm's transports, op by op, with exact data (kernels/comm.h).
 *
 * ctest runs it alone (the single-rank transport), under `mpirun -np 2/3`
 * (MPI), and with --nccl alone and under mpirun (NCCL, device buffers; exit
 * 77 = skipped, with the reason printed, when there is no GPU, fewer GPUs than
 * ranks on a node, or no NCCL in the build).
 *
 * Every byte a rank sends is a hash of (case, sender, receiver, offset), so a
 * block from the wrong rank, in the wrong place or shifted by any amount is
 * caught; receive buffers start as the bitwise complement of what must
 * arrive. Each op also checks the stats comm.c keeps (calls, and bytes_sent:
 * the payload that left this rank, its own block excluded). Covered: every
 * op at odd sizes and at a few MiB, zero-byte ops, argument errors, the
 * USP splits (Ulysses groups color rank/U key rank%U, ring groups the
 * transpose) for every U dividing the size, reversed and uneven splits, and
 * last the timeout: one rank arrives 3 s late to an op with a 1 s timeout;
 * the others must fail with KN_ERR_COMM naming the op and size and saying
 * another rank stopped answering, then fail at once ("broken"). That runs on
 * a communicator split (or, for NCCL, created) for it, so the world stays
 * healthy: the late rank catches up, a world barrier with a long timeout
 * lets it, and MPI is finalised normally. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "kernels/comm.h"
#include "kernels/device.h"

#define SKIP 77

static int rank, size;             /* in the world */
static kn_device dev = KN_DEV_CPU; /* where the buffers of the communicator under test live */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* n bytes of what rank src sends to rank dst in case salt (dst = ALL: the
 * same block to everyone); complemented with invert, for receive buffers. */
#define ALL 255
static void fill(uint8_t *p, size_t n, uint32_t salt, int src, int dst, int invert) {
    uint64_t key = ((uint64_t)(salt & 0xffff) << 48) | ((uint64_t)(src & 0xff) << 40) | ((uint64_t)(dst & 0xff) << 32);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t h = mix(key ^ (i >> 3));
        if (invert) h = ~h;
        for (size_t k = 0; k < 8 && i + k < n; k++) p[i + k] = (uint8_t)(h >> (8 * k));
    }
}

/* ---- buffers on the device under test ----------------------------------------- */

typedef struct buf {
    uint8_t *host; /* what is sent, or what arrived once buf_get ran */
    void *data;    /* host itself on the CPU, else device memory */
    size_t bytes;
} buf;

static int buf_new(buf *b, size_t bytes) {
    kn_err err;
    *b = (buf){malloc(bytes ? bytes : 1), NULL, bytes};
    b->data = dev == KN_DEV_CPU ? b->host : kn_device_alloc(dev, bytes ? bytes : 1, &err);
    CHECK(b->host && b->data, "allocating %zu bytes: %s", bytes, b->data ? "out of memory" : err.msg);
    if (b->host && b->data) return 0;
    free(b->host);
    return 1;
}

static void buf_free(buf *b) {
    if (b->data != b->host) kn_device_free(dev, b->data);
    free(b->host);
}

static int buf_put(buf *b) {
    kn_err err;
    if (dev == KN_DEV_CPU || !b->bytes) return 0;
    int rc = kn_device_memcpy(dev, b->data, KN_DEV_CPU, b->host, b->bytes, &err);
    CHECK(rc == KN_OK, "copy to the device: %s", err.msg);
    return rc;
}

static int buf_get(buf *b) {
    kn_err err;
    if (dev == KN_DEV_CPU || !b->bytes) return 0;
    int rc = kn_device_memcpy(KN_DEV_CPU, b->host, dev, b->data, b->bytes, &err);
    CHECK(rc == KN_OK, "copy from the device: %s", err.msg);
    return rc;
}

/* ---- one op at a time ------------------------------------------------------------ */

/* "nccl 2/3" for messages: the communicator, its size and this rank in it. */
static const char *who(kn_comm *c) {
    static char s[64];
    snprintf(s, sizeof s, "%s rank %d of %d", kn_comm_kind(c), kn_comm_rank(c), kn_comm_size(c));
    return s;
}

/* Checks the bytes of got against fill(salt, src, dst); names the first difference. */
static void expect_block(const uint8_t *got, size_t n, uint32_t salt, int src, int dst, const char *op, kn_comm *c) {
    uint8_t *want = malloc(n ? n : 1);
    if (!want) return;
    fill(want, n, salt, src, dst, 0);
    size_t i = 0;
    while (i < n && got[i] == want[i]) i++;
    CHECK(i == n, "%s, %s: %zu-byte block from rank %d: byte %zu is %u, not %u", who(c), op, n, src, i,
          i < n ? got[i] : 0, i < n ? want[i] : 0);
    free(want);
}

/* The stats comm.c keeps for one op issued after `before`. */
static void expect_stats(kn_comm *c, const kn_comm_stats *before, uint64_t sent, const char *op, size_t bytes) {
    const kn_comm_stats *s = kn_comm_get_stats(c);
    CHECK(s->calls == before->calls + 1, "%s, %s of %zu bytes: %llu calls after %llu", who(c), op, bytes,
          (unsigned long long)s->calls, (unsigned long long)before->calls);
    CHECK(s->bytes_sent == before->bytes_sent + sent, "%s, %s of %zu bytes: bytes_sent grew by %llu, not %llu", who(c),
          op, bytes, (unsigned long long)(s->bytes_sent - before->bytes_sent), (unsigned long long)sent);
    CHECK(s->wait_s >= before->wait_s, "%s, %s: wait_s went down", who(c), op);
}

static void check_broadcast(kn_comm *c, size_t bytes, uint32_t salt) {
    int r = kn_comm_rank(c), P = kn_comm_size(c);
    buf b;
    if (buf_new(&b, bytes)) return;
    for (int root = 0; root < P; root++) {
        fill(b.host, bytes, salt + (uint32_t)root, root, ALL, r != root);
        if (buf_put(&b)) break;
        kn_comm_stats before = *kn_comm_get_stats(c);
        kn_err err;
        int rc = kn_comm_broadcast(c, b.data, bytes, root, &err);
        CHECK(rc == KN_OK, "%s, broadcast of %zu bytes from %d: %s", who(c), bytes, root, err.msg);
        if (rc || buf_get(&b)) break;
        expect_block(b.host, bytes, salt + (uint32_t)root, root, ALL, "broadcast", c);
        expect_stats(c, &before, r == root ? (uint64_t)bytes * (uint64_t)(P - 1) : 0, "broadcast", bytes);
    }
    buf_free(&b);
}

static void check_all_to_all(kn_comm *c, size_t bytes, uint32_t salt) {
    int r = kn_comm_rank(c), P = kn_comm_size(c);
    buf s, d;
    if (buf_new(&s, bytes * (size_t)P)) return;
    if (buf_new(&d, bytes * (size_t)P)) {
        buf_free(&s);
        return;
    }
    for (int j = 0; j < P; j++) {
        fill(s.host + (size_t)j * bytes, bytes, salt, r, j, 0); /* block j goes to rank j */
        fill(d.host + (size_t)j * bytes, bytes, salt, j, r, 1);
    }
    kn_comm_stats before = *kn_comm_get_stats(c);
    kn_err err;
    int rc = buf_put(&s) || buf_put(&d);
    if (!rc) {
        rc = kn_comm_all_to_all(c, s.data, d.data, bytes, &err);
        CHECK(rc == KN_OK, "%s, all_to_all of %zu bytes: %s", who(c), bytes, err.msg);
    }
    if (!rc && !buf_get(&d)) {
        for (int j = 0; j < P; j++) expect_block(d.host + (size_t)j * bytes, bytes, salt, j, r, "all_to_all", c);
        expect_stats(c, &before, (uint64_t)bytes * (uint64_t)(P - 1), "all_to_all", bytes);
    }
    buf_free(&s);
    buf_free(&d);
}

static void check_all_gather(kn_comm *c, size_t bytes, uint32_t salt) {
    int r = kn_comm_rank(c), P = kn_comm_size(c);
    buf s, d;
    if (buf_new(&s, bytes)) return;
    if (buf_new(&d, bytes * (size_t)P)) {
        buf_free(&s);
        return;
    }
    fill(s.host, bytes, salt, r, ALL, 0);
    for (int j = 0; j < P; j++) fill(d.host + (size_t)j * bytes, bytes, salt, j, ALL, 1);
    kn_comm_stats before = *kn_comm_get_stats(c);
    kn_err err;
    int rc = buf_put(&s) || buf_put(&d);
    if (!rc) {
        rc = kn_comm_all_gather(c, s.data, d.data, bytes, &err);
        CHECK(rc == KN_OK, "%s, all_gather of %zu bytes: %s", who(c), bytes, err.msg);
    }
    if (!rc && !buf_get(&d)) {
        for (int j = 0; j < P; j++) expect_block(d.host + (size_t)j * bytes, bytes, salt, j, ALL, "all_gather", c);
        expect_stats(c, &before, (uint64_t)bytes * (uint64_t)(P - 1), "all_gather", bytes);
    }
    buf_free(&s);
    buf_free(&d);
}

/* Every rank sends to dst_of(r) and receives from the rank whose dst it is. */
static void check_sendrecv(kn_comm *c, size_t bytes, uint32_t salt, int dst, int src, const char *what) {
    int r = kn_comm_rank(c);
    buf s, d;
    if (buf_new(&s, bytes)) return;
    if (buf_new(&d, bytes)) {
        buf_free(&s);
        return;
    }
    fill(s.host, bytes, salt, r, dst, 0);
    fill(d.host, bytes, salt, src, r, 1);
    kn_comm_stats before = *kn_comm_get_stats(c);
    kn_err err;
    int rc = buf_put(&s) || buf_put(&d);
    if (!rc) {
        rc = kn_comm_sendrecv(c, s.data, dst, d.data, src, bytes, &err);
        CHECK(rc == KN_OK, "%s, sendrecv (%s) of %zu bytes to %d from %d: %s", who(c), what, bytes, dst, src, err.msg);
    }
    if (!rc && !buf_get(&d)) {
        expect_block(d.host, bytes, salt, src, r, what, c);
        expect_stats(c, &before, dst == r ? 0 : (uint64_t)bytes, what, bytes);
    }
    buf_free(&s);
    buf_free(&d);
}

static void check_hops(kn_comm *c, size_t bytes, uint32_t salt) {
    int r = kn_comm_rank(c), P = kn_comm_size(c);
    check_sendrecv(c, bytes, salt, (r + 1) % P, (r + P - 1) % P, "ring hop forward");
    check_sendrecv(c, bytes, salt + 1, (r + P - 1) % P, (r + 1) % P, "ring hop backward");
    check_sendrecv(c, bytes, salt + 2, r, r, "hop to itself");
    if (P % 2 == 0) check_sendrecv(c, bytes, salt + 3, r ^ 1, r ^ 1, "pair swap"); /* dst == src */
}

static void check_barrier(kn_comm *c) {
    kn_comm_stats before = *kn_comm_get_stats(c);
    kn_err err;
    int rc = kn_comm_barrier(c, &err);
    CHECK(rc == KN_OK, "%s, barrier: %s", who(c), err.msg);
    if (!rc) expect_stats(c, &before, 0, "barrier", 0);
}

/* Zero bytes: nothing reaches the transport (NULL buffers are fine) and
 * nothing is written, but the call counts. */
static void check_zero_bytes(kn_comm *c) {
    int r = kn_comm_rank(c), P = kn_comm_size(c);
    kn_err err;
    kn_comm_stats before = *kn_comm_get_stats(c);
    int rc = kn_comm_broadcast(c, NULL, 0, P - 1, &err);
    CHECK(rc == KN_OK, "%s, broadcast of 0 bytes: %s", who(c), err.msg);
    expect_stats(c, &before, 0, "broadcast", 0);
    before = *kn_comm_get_stats(c);
    rc = kn_comm_all_to_all(c, NULL, NULL, 0, &err);
    CHECK(rc == KN_OK, "%s, all_to_all of 0 bytes: %s", who(c), err.msg);
    expect_stats(c, &before, 0, "all_to_all", 0);
    before = *kn_comm_get_stats(c);
    rc = kn_comm_sendrecv(c, NULL, (r + 1) % P, NULL, (r + P - 1) % P, 0, &err);
    CHECK(rc == KN_OK, "%s, sendrecv of 0 bytes: %s", who(c), err.msg);
    expect_stats(c, &before, 0, "sendrecv", 0);
    buf d;
    if (buf_new(&d, 64)) return;
    fill(d.host, 64, 7, r, r, 0);
    if (!buf_put(&d)) {
        before = *kn_comm_get_stats(c);
        rc = kn_comm_all_gather(c, d.data, d.data, 0, &err);
        CHECK(rc == KN_OK, "%s, all_gather of 0 bytes: %s", who(c), err.msg);
        expect_stats(c, &before, 0, "all_gather", 0);
        if (!rc && !buf_get(&d)) expect_block(d.host, 64, 7, r, r, "all_gather of 0 bytes (untouched)", c);
    }
    buf_free(&d);
}

/* Bad arguments fail before the transport, on every rank alike, and break nothing. */
static void check_bad_arguments(kn_comm *c) {
    int P = kn_comm_size(c);
    uint8_t x[4] = {0};
    kn_err err;
    kn_comm_stats before = *kn_comm_get_stats(c);
    int rc = kn_comm_broadcast(c, x, sizeof x, P, &err);
    CHECK(rc == KN_ERR_INVALID && strstr(err.msg, "root"), "%s, broadcast from root %d: %d %s", who(c), P, rc,
          err.msg);
    rc = kn_comm_broadcast(c, x, sizeof x, -1, &err);
    CHECK(rc == KN_ERR_INVALID, "%s, broadcast from root -1: %d", who(c), rc);
    rc = kn_comm_sendrecv(c, x, P, x, 0, sizeof x, &err);
    CHECK(rc == KN_ERR_INVALID && strstr(err.msg, "sendrecv"), "%s, sendrecv to %d: %d %s", who(c), P, rc, err.msg);
    rc = kn_comm_sendrecv(c, x, 0, x, -1, sizeof x, &err);
    CHECK(rc == KN_ERR_INVALID, "%s, sendrecv from -1: %d", who(c), rc);
    CHECK(kn_comm_get_stats(c)->calls == before.calls, "%s: refused calls were counted", who(c));
    CHECK(!kn_comm_broken(c), "%s: a refused call broke the communicator", who(c));
}

/* Every op at small odd sizes (and a few MiB when `large`), then the edge cases. */
static void check_ops(kn_comm *c, uint32_t salt, int large) {
    static const size_t small[] = {1, 7, 4096 + 3};
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++, salt += 16) {
        check_broadcast(c, small[i], salt);
        check_all_to_all(c, small[i], salt + 4);
        check_all_gather(c, small[i], salt + 5);
        check_hops(c, small[i], salt + 6);
        check_barrier(c);
    }
    if (large) {
        check_broadcast(c, ((size_t)8 << 20) + 3, salt);
        check_all_to_all(c, ((size_t)3 << 20) + 5, salt + 4);
        check_all_gather(c, ((size_t)2 << 20) + 1, salt + 5);
        check_hops(c, ((size_t)4 << 20) + 7, salt + 6);
    }
    check_zero_bytes(c);
    check_bad_arguments(c);
}

/* ---- splits ---------------------------------------------------------------------- */

/* The world ranks of c's members, in c's rank order, must be want[0..n). */
static void expect_members(kn_comm *c, const int *want, int n, const char *what) {
    CHECK(kn_comm_size(c) == n, "%s: %s has %d ranks, not %d", who(c), what, kn_comm_size(c), n);
    if (kn_comm_size(c) != n) return;
    buf s, d;
    if (buf_new(&s, sizeof(int32_t))) return;
    if (buf_new(&d, sizeof(int32_t) * (size_t)n)) {
        buf_free(&s);
        return;
    }
    int32_t me = rank;
    memcpy(s.host, &me, sizeof me);
    kn_err err;
    int rc = buf_put(&s);
    if (!rc) {
        rc = kn_comm_all_gather(c, s.data, d.data, sizeof me, &err);
        CHECK(rc == KN_OK, "%s, %s: all_gather of members: %s", who(c), what, err.msg);
    }
    if (!rc && !buf_get(&d))
        for (int j = 0; j < n; j++) {
            int32_t got;
            memcpy(&got, d.host + (size_t)j * sizeof got, sizeof got);
            CHECK(got == want[j], "%s, %s: rank %d is world rank %d, not %d", who(c), what, j, (int)got, want[j]);
        }
    buf_free(&s);
    buf_free(&d);
}

/* kn_comm_split, or 0 with a printed skip where the transport refuses splits
 * (NCCL < 2.18: KN_ERR_UNSUPPORTED, on every rank alike). */
static int split(kn_comm *c, int color, int key, kn_comm **out, const char *what) {
    kn_err err;
    int rc = kn_comm_split(c, color, key, out, &err);
    if (rc == KN_ERR_UNSUPPORTED && strcmp(kn_comm_kind(c), "nccl") == 0) {
        if (rank == 0) printf("test_comm: skipping NCCL splits: %s\n", err.msg);
        return 0;
    }
    CHECK(rc == KN_OK, "%s, split %s (color %d, key %d): %s", who(c), what, color, key, err.msg);
    if (rc) return 0;
    CHECK(strcmp(kn_comm_kind(*out), kn_comm_kind(c)) == 0, "%s: split %s is %s", who(c), what, kn_comm_kind(*out));
    CHECK(kn_comm_timeout(*out) == kn_comm_timeout(c), "%s: split %s has timeout %g, not %g", who(c), what,
          kn_comm_timeout(*out), kn_comm_timeout(c));
    return 1;
}

/* c spans the world (rank r of c is world rank r). */
static void check_splits(kn_comm *c, uint32_t salt) {
    int want[256];
    for (int U = 1; U <= size; U++) {
        if (size % U) continue;
        int R = size / U;
        kn_comm *uly = NULL, *ring = NULL;
        /* USP: Ulysses groups of U consecutive ranks, ring groups across them */
        if (!split(c, rank / U, rank % U, &uly, "ulysses")) return;
        if (!split(c, rank % U, rank / U, &ring, "ring")) {
            kn_comm_free(uly);
            return;
        }
        CHECK(kn_comm_rank(uly) == rank % U && kn_comm_rank(ring) == rank / U, "U = %d: ranks %d, %d", U,
              kn_comm_rank(uly), kn_comm_rank(ring));
        for (int k = 0; k < U; k++) want[k] = rank / U * U + k;
        expect_members(uly, want, U, "ulysses group");
        for (int k = 0; k < R; k++) want[k] = rank % U + k * U;
        expect_members(ring, want, R, "ring group");
        check_ops(uly, salt, 0);
        check_ops(ring, salt + 100, 0);
        /* one USP attention's traffic: Ulysses in, a ring hop, Ulysses out */
        check_all_to_all(uly, 1000, salt + 200);
        check_sendrecv(ring, 1000, salt + 201, (kn_comm_rank(ring) + 1) % R, (kn_comm_rank(ring) + R - 1) % R,
                       "USP ring hop");
        check_all_to_all(uly, 1000, salt + 202);
        kn_comm_free(ring);
        kn_comm_free(uly);
        salt += 1000;
    }
    kn_comm *rev = NULL, *half = NULL, *same = NULL;
    if (split(c, 0, -rank, &rev, "reversed")) { /* key order, not rank order */
        for (int k = 0; k < size; k++) want[k] = size - 1 - k;
        expect_members(rev, want, size, "reversed split");
        check_ops(rev, salt, 0);
        kn_comm_free(rev);
    }
    if (split(c, rank % 2, rank, &half, "even/odd")) { /* uneven when the size is odd */
        int n = 0;
        for (int k = rank % 2; k < size; k += 2) want[n++] = k;
        expect_members(half, want, n, "even/odd split");
        check_ops(half, salt + 100, 0);
        /* a split of a split, equal keys: the parent's order */
        if (split(half, 0, 0, &same, "of a split")) {
            expect_members(same, want, n, "split of a split");
            kn_comm_free(same);
        }
        kn_comm_free(half);
    }
}

/* ---- the timeout, last ----------------------------------------------------------- */

/* Buffers of the timed-out MPI op: the MPI library may still complete the
 * abandoned operation into them while the late rank catches up, so they
 * outlive the test. */
#define LATE_RANKS 16
static uint8_t late_send[LATE_RANKS * 1000], late_recv[LATE_RANKS * 1000];

/* t: a communicator over the same ranks as world, for this case only. The
 * last rank sleeps 3 s before its all_to_all; the others' 1 s timeout must
 * fire first. */
static void check_timeout_on(kn_comm *world, kn_comm *t) {
    const size_t bytes = 1000;
    const int late = size - 1, nccl = strcmp(kn_comm_kind(t), "nccl") == 0;
    int r = kn_comm_rank(t), P = kn_comm_size(t);
    /* The late rank's own op: over MPI it completes (the others' requests are
     * still posted, and their world barrier drives MPI's progress); over NCCL
     * the others aborted, so it fails after its own timeout. */
    if (P > LATE_RANKS) {
        if (rank == 0) printf("test_comm: the timeout case is written for at most %d ranks\n", LATE_RANKS);
        return;
    }
    kn_comm_set_timeout(t, r != late ? 1.0 : nccl ? 2.0 : 60.0);
    buf s = {late_send, late_send, bytes * (size_t)P}, d = {late_recv, late_recv, bytes * (size_t)P};
    if (nccl && buf_new(&s, bytes * (size_t)P)) return;
    if (nccl && buf_new(&d, bytes * (size_t)P)) {
        buf_free(&s);
        return;
    }
    for (int j = 0; j < P; j++) {
        fill(s.host + (size_t)j * bytes, bytes, 77, r, j, 0);
        fill(d.host + (size_t)j * bytes, bytes, 77, j, r, 1);
    }
    if (buf_put(&s) || buf_put(&d)) return;
    kn_comm_stats before = *kn_comm_get_stats(t);
    kn_err err;
    if (r == late) {
        sleep(3);
        int rc = kn_comm_all_to_all(t, s.data, d.data, bytes, &err);
        if (!nccl) {
            CHECK(rc == KN_OK, "%s, the late rank's all_to_all: %s", who(t), err.msg);
            for (int j = 0; !rc && j < P; j++) expect_block(d.host + (size_t)j * bytes, bytes, 77, j, r, "late all_to_all", t);
        } else {
            CHECK(rc == KN_ERR_COMM, "%s, the late rank's all_to_all after the others aborted: %d %s", who(t), rc,
                  err.msg);
        }
    } else {
        double t0 = now_s();
        int rc = kn_comm_all_to_all(t, s.data, d.data, bytes, &err);
        double waited = now_s() - t0;
        char head[64];
        snprintf(head, sizeof head, "rank %d of %d: ", r, P);
        CHECK(rc == KN_ERR_COMM, "%s, all_to_all with a rank 3 s late and a 1 s timeout: %d %s", who(t), rc, err.msg);
        CHECK(waited >= 0.9 && waited < 2.5, "%s: the timeout fired after %.2f s", who(t), waited);
        CHECK(strstr(err.msg, "all_to_all of 1000 bytes") && strstr(err.msg, "another rank stopped answering") &&
                  strstr(err.msg, head),
              "%s: message \"%s\"", who(t), err.msg);
        CHECK(kn_comm_broken(t), "%s: not broken after a timeout", who(t));
        expect_stats(t, &before, 0, "timed-out all_to_all", bytes);
        /* broken: later calls fail at once, without waiting for anyone */
        t0 = now_s();
        rc = kn_comm_barrier(t, &err);
        CHECK(rc == KN_ERR_COMM && strstr(err.msg, "barrier") && strstr(err.msg, "broken"),
              "%s, barrier on a broken communicator: %d %s", who(t), rc, err.msg);
        rc = kn_comm_all_gather(t, s.data, d.data, bytes, &err);
        CHECK(rc == KN_ERR_COMM && strstr(err.msg, "all_gather") && strstr(err.msg, "broken"),
              "%s, all_gather on a broken communicator: %d %s", who(t), rc, err.msg);
        CHECK(now_s() - t0 < 0.5, "%s: calls on a broken communicator took %.2f s", who(t), now_s() - t0);
        CHECK(!kn_comm_broken(world), "%s: the world broke with the split", who(world));
    }
    /* every rank here, the late one once its op is over */
    double t_world = kn_comm_timeout(world);
    kn_comm_set_timeout(world, 60);
    int rc = kn_comm_barrier(world, &err);
    CHECK(rc == KN_OK, "%s, barrier after the timeout case: %s", who(world), err.msg);
    kn_comm_set_timeout(world, t_world);
    if (nccl) {
        buf_free(&s);
        buf_free(&d);
    }
}

/* ---- the transports ---------------------------------------------------------- */

/* This process's rank among those on its node, and their number. */
static int env_int(const char *const *names, int fallback) {
    for (; *names; names++) {
        const char *v = getenv(*names);
        if (v && *v) return atoi(v);
    }
    return fallback;
}
static int local_rank(void) {
    static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", NULL};
    return env_int(names, rank);
}
static int local_size(void) {
    static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", NULL};
    return env_int(names, size);
}

/* Whether every rank says yes (world all_gather, host memory). */
static int all_agree(kn_comm *world, int yes) {
    int32_t mine = yes, all[256];
    kn_err err;
    int rc = kn_comm_all_gather(world, &mine, all, sizeof mine, &err);
    CHECK(rc == KN_OK, "%s, all_gather of a flag: %s", who(world), err.msg);
    for (int j = 0; !rc && j < size; j++)
        if (!all[j]) return 0;
    return !rc;
}

/* Without a usable GPU anywhere kn_comm_nccl must fail on every rank, quickly,
 * with KN_ERR_UNSUPPORTED (no NCCL in the build: it names what to install)
 * or the CUDA backend's reason, and leave the world working. */
static void check_nccl_refused(kn_comm *world) {
    char why[256];
    if (!all_agree(world, kn_cuda_gpu_count(why, sizeof why) == 0)) return;
    kn_comm *nc = (kn_comm *)&nc; /* must be reset */
    kn_err err;
    double t0 = now_s();
    int rc = kn_comm_nccl(&nc, world, 0, &err);
#ifdef KN_HAVE_NCCL
    CHECK(rc == KN_ERR_BACKEND && strstr(err.msg, "no CUDA device"), "kn_comm_nccl without a GPU: %d %s", rc, err.msg);
#else
    CHECK(rc == KN_ERR_UNSUPPORTED && strstr(err.msg, "NCCL") && strstr(err.msg, "install"),
          "kn_comm_nccl without NCCL: %d %s", rc, err.msg);
#endif
    CHECK(nc == NULL, "kn_comm_nccl failed but set a communicator");
    CHECK(now_s() - t0 < 10, "kn_comm_nccl took %.1f s to fail", now_s() - t0);
    CHECK(!kn_comm_broken(world), "a refused kn_comm_nccl broke the world");
    check_barrier(world);
    if (rank == 0) printf("test_comm: kn_comm_nccl refused as expected: %s\n", err.msg);
}

/* Single rank or MPI: the world itself, its splits, the timeout. */
static int run_world(kn_comm *world) {
    CHECK(strcmp(kn_comm_kind(world), size == 1 ? "single" : "mpi") == 0, "world of %d is %s", size,
          kn_comm_kind(world));
    check_ops(world, 1, 1);
    check_splits(world, 5000);
    check_nccl_refused(world);
    if (size > 1) {
        kn_comm *t = NULL;
        if (split(world, 0, rank, &t, "for the timeout")) {
            check_timeout_on(world, t);
            kn_comm_free(t);
        }
    } else {
        printf("test_comm: the timeout needs two ranks (run under mpirun)\n");
    }
    return 0;
}

/* NCCL over the world: device buffers, one GPU per rank. */
static int run_nccl(kn_comm *world) {
    char why[256] = "";
    int gpus = kn_cuda_gpu_count(why, sizeof why), lsize = local_size();
    if (gpus > 0 && gpus < lsize)
        snprintf(why, sizeof why, "%d GPU%s for %d ranks on this node: NCCL needs one GPU per rank", gpus,
                 gpus == 1 ? "" : "s", lsize);
    int ready = gpus >= lsize;
#ifndef KN_HAVE_NCCL
    snprintf(why, sizeof why, "this build has no NCCL");
    ready = 0;
#endif
    if (!all_agree(world, ready)) {
        if (!ready) printf("SKIP test_comm --nccl, rank %d of %d: %s\n", rank, size, why);
        return SKIP;
    }
    int device = local_rank() % gpus;
    kn_err err;

    /* one rank cannot take part: every rank fails, the others naming it */
    kn_comm *nc = NULL;
    int rc = kn_comm_nccl(&nc, world, rank == size - 1 ? gpus + 7 : device, &err);
    CHECK(rc == KN_ERR_INVALID && nc == NULL, "kn_comm_nccl with a bad device on rank %d: %d %s", size - 1, rc,
          err.msg);
    if (rank != size - 1) {
        char named[64];
        snprintf(named, sizeof named, "failed on rank %d of %d", size - 1, size);
        CHECK(strstr(err.msg, named), "kn_comm_nccl, a bad device elsewhere: \"%s\"", err.msg);
    }
    CHECK(!kn_comm_broken(world), "a failed kn_comm_nccl broke the world");

    rc = kn_comm_nccl(&nc, world, device, &err);
    CHECK(rc == KN_OK, "kn_comm_nccl on device %d: %s", device, err.msg);
    if (rc) return 1;
    CHECK(strcmp(kn_comm_kind(nc), "nccl") == 0 && kn_comm_rank(nc) == rank && kn_comm_size(nc) == size &&
              kn_comm_timeout(nc) == kn_comm_timeout(world),
          "NCCL communicator: %s, timeout %g", who(nc), kn_comm_timeout(nc));
    dev = KN_DEV_CUDA;
    check_ops(nc, 1, 1);
    check_splits(nc, 5000);
    kn_comm_free(nc);
    if (size > 1) {
        kn_comm *t = NULL;
        rc = kn_comm_nccl(&t, world, device, &err);
        CHECK(rc == KN_OK, "kn_comm_nccl for the timeout: %s", err.msg);
        if (!rc) {
            check_timeout_on(world, t);
            kn_comm_free(t);
        }
    }
    dev = KN_DEV_CPU;
    if (rank == 0) printf("test_comm: NCCL on %d rank%s, device %d\n", size, size == 1 ? "" : "s", device);
    return 0;
}

int main(int argc, char **argv) {
    int nccl = argc > 1 && strcmp(argv[1], "--nccl") == 0;
    kn_comm *world = NULL;
    kn_err err;
    if (kn_comm_world(&world, &err)) {
        fprintf(stderr, "test_comm: %s\n", err.msg);
        return 1;
    }
    rank = kn_comm_rank(world);
    size = kn_comm_size(world);
    if (size > 256) {
        fprintf(stderr, "test_comm: written for at most 256 ranks, not %d\n", size);
        kn_comm_free(world);
        return 1;
    }
    CHECK(kn_comm_timeout(world) == 120, "default timeout %g", kn_comm_timeout(world));
    kn_comm_set_timeout(world, 60);
    CHECK(kn_comm_timeout(world) == 60, "timeout %g after setting 60", kn_comm_timeout(world));
    kn_comm_reset_stats(world);
    const kn_comm_stats *s = kn_comm_get_stats(world);
    CHECK(s->calls == 0 && s->bytes_sent == 0 && s->wait_s == 0, "stats after a reset");

    int rc = nccl ? run_nccl(world) : run_world(world);
    if (rank == 0 || failures)
        printf("test_comm%s rank %d of %d: %d checks, %d failed\n", nccl ? " --nccl" : "", rank, size, checks,
               failures);
    kn_comm_free(world);
    return failures ? 1 : rc;
}
