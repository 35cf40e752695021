/* The scratch arena: bump allocation, marks and resets, and the spare chunk
 * a reset keeps mapped so the next op's scratch is not faulted in again,
 * until kn_arena_trim unmaps it (the executor trims after every node). Run
 * under ASan in CI, which reports any use of an unmapped or freed chunk. */
#include <stdint.h>
#include <string.h>

#include "kernels/tensor.h"
#include "tests/unit/check.h"

#define MIB ((size_t)1 << 20)

int main(void) {
    kn_arena *a = NULL;
    kn_err err;
    kn_err_clear(&err);
    if (kn_arena_create(&a, KN_DEV_CPU, &err)) {
        fprintf(stderr, "arena: %s\n", err.msg);
        return 1;
    }
    char *small = kn_arena_alloc(a, 1000, &err);
    CHECK(small && ((uintptr_t)small & 63) == 0, "first allocation 64-byte aligned");
    size_t mark = kn_arena_mark(a);
    CHECK(mark == 1024, "mark after 1000 bytes is %zu (rounded to 64)", mark);

    /* beyond the 64 MiB bottom chunk: a chunk of its own */
    char *big = kn_arena_alloc(a, 100 * MIB, &err);
    CHECK(big != NULL, "100 MiB");
    memset(big, 1, 100 * MIB);
    kn_arena_reset(a, mark);
    CHECK(kn_arena_mark(a) == mark, "reset returns to the mark");

    /* a smaller need after the reset lands in the same (spare) chunk */
    kn_arena_alloc(a, 63 * MIB, &err); /* fills the bottom chunk */
    char *again = kn_arena_alloc(a, 80 * MIB, &err);
    CHECK(again == big, "the spare is reused: %p, first %p", (void *)again, (void *)big);
    CHECK(again[80 * MIB - 1] == 1, "the spare's pages stayed mapped");
    kn_arena_reset(a, mark);

    /* a bigger need replaces the spare */
    kn_arena_alloc(a, 63 * MIB, &err);
    char *bigger = kn_arena_alloc(a, 150 * MIB, &err);
    CHECK(bigger != NULL, "150 MiB");
    memset(bigger, 2, 150 * MIB);
    kn_arena_reset(a, mark);

    /* after a trim (the spare unmapped) the arena maps what it needs again */
    kn_arena_trim(a);
    kn_arena_alloc(a, 63 * MIB, &err);
    char *fresh = kn_arena_alloc(a, 120 * MIB, &err);
    CHECK(fresh != NULL, "120 MiB after trim");
    if (fresh) memset(fresh, 3, 120 * MIB);
    kn_arena_reset(a, mark);

    /* overflowing sizes fail with an error, not a crash */
    CHECK(kn_arena_alloc(a, SIZE_MAX - 10, &err) == NULL && err.code == KN_ERR_NOMEM, "SIZE_MAX - 10 refused");

    kn_arena_release(a);
    CHECK(kn_arena_mark(a) == 0, "release empties the arena");
    kn_arena_destroy(a);
    printf("test_arena: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
