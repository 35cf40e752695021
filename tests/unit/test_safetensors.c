/* Tests for the safetensors reader/writer (kernels/safetensors.h) and the
 * dtype conversions it hands data to (kernels/dtype.h).
 *
 * Bad files are written by the test itself (into $KN_TEST_TMP) and opened both
 * from disk and from memory: each must fail with an error, never a crash, and
 * the message must name the file and, where one is to blame, the tensor.
 * Conversions are checked against a double-precision reference that knows
 * nothing of the kernels' bit tricks. Prefix views (kn_st_view) are checked
 * on a small checkpoint-shaped file. */
#include <dirent.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/dtype.h"
#include "kernels/safetensors.h"
#include "check.h"

/* Failures past the first few are only counted: a broken conversion would
 * otherwise print one line for each of a million inputs. */
static char tmp_dir[512];

static void tmp_path(char *out, size_t len, const char *name) { snprintf(out, len, "%s/%s", tmp_dir, name); }

/* Writes bytes to path, then (extend_to > len) grows the file sparsely so a
 * huge header length can be tested without writing 100 MB. */
static void write_bytes(const char *path, const void *bytes, size_t len, size_t extend_to) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || (len && write(fd, bytes, len) != (ssize_t)len) ||
        (extend_to > len && ftruncate(fd, (off_t)extend_to) != 0) || close(fd) != 0) {
        perror(path);
        exit(1);
    }
}

/* A file written as [8-byte LE header length][header][data_len filler bytes]. */
static void write_st(const char *path, const char *header, size_t data_len) {
    size_t hlen = strlen(header), total = 8 + hlen + data_len;
    uint8_t *buf = malloc(total);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++) buf[8 + hlen + i] = (uint8_t)(i * 37 + 11);
    write_bytes(path, buf, total, 0);
    free(buf);
}

/* The reader's two entry points over the same bytes: kn_st_open(path) and
 * kn_st_open_memory over a private mapping of the file. */
enum { OPEN_FILE, OPEN_MEMORY, OPEN_MODES };

typedef struct opened {
    kn_st_file *f;
    void *map;
    size_t map_len;
    char label[600]; /* what the error message must name */
} opened;

static int open_mode(opened *o, int mode, const char *path, kn_err *err) {
    static const uint8_t nothing[1]; /* mmap refuses zero-length files */
    memset(o, 0, sizeof *o);
    kn_err_clear(err);
    if (mode == OPEN_FILE) {
        snprintf(o->label, sizeof o->label, "%s", path);
        return kn_st_open(&o->f, path, err);
    }
    snprintf(o->label, sizeof o->label, "mem:%s", strrchr(path, '/') + 1);
    struct stat sb;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &sb) != 0) {
        perror(path);
        exit(1);
    }
    o->map_len = (size_t)sb.st_size;
    const void *buf = nothing;
    if (o->map_len) {
        o->map = mmap(NULL, o->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (o->map == MAP_FAILED) {
            perror(path);
            exit(1);
        }
        buf = o->map;
    }
    close(fd);
    return kn_st_open_memory(&o->f, buf, o->map_len, o->label, err);
}

static void close_opened(opened *o) {
    kn_st_close(o->f);
    if (o->map) munmap(o->map, o->map_len);
}

/* ---- bad files ------------------------------------------------------------ */

/* One tensor entry of a header, e.g. T("a", "F32", "[2]", "[0,8]"). */
#define T(name, dtype, shape, offsets) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offsets "}"
/* Raw file bytes, for files whose framing (not JSON) is the point; may hold NULs. */
#define RAW(s) .raw = s, .raw_len = sizeof(s) - 1

typedef struct bad_case {
    const char *what;
    const char *header;  /* JSON header; the length prefix is computed */
    size_t data_len;     /* filler bytes after the header */
    const char *raw;     /* or: the whole file, byte for byte */
    size_t raw_len;
    size_t extend_to;    /* grow the file (sparse) to this size */
    const char *tensor;  /* the name the message must contain, if any */
} bad_case;

static const bad_case bad_cases[] = {
    /* framing */
    {.what = "empty file", RAW("")},
    {.what = "length prefix cut short", RAW("\x02\x00\x00")},
    {.what = "header length 0", RAW("\0\0\0\0\0\0\0\0")},
    {.what = "header length past the end of the file", RAW("\x40\0\0\0\0\0\0\0{}")},
    /* The file really is that long, so only the 100 MB cap can reject it. */
    {.what = "header length over 100 MB", RAW("\x01\x00\x40\x06\0\0\0\0{}"), .extend_to = (100u << 20) + 64},
    {.what = "header length overflows when 8 is added", RAW("\xfc\xff\xff\xff\xff\xff\xff\xff{}")},
    /* JSON */
    {.what = "invalid JSON", .header = "{\"a\":"},
    {.what = "JSON followed by garbage", .header = "{} x"},
    {.what = "NUL after the JSON", RAW("\x03\0\0\0\0\0\0\0{}\0")},
    {.what = "header is an array", .header = "[]"},
    {.what = "non-UTF-8 tensor name", .header = "{" T("bad\xff\xfe", "F32", "[1]", "[0,4]") "}", .data_len = 4},
    {.what = "non-UTF-8 metadata value", .header = "{\"__metadata__\":{\"k\":\"\xc3\x28\"}}"},
    {.what = "duplicate tensor name",
     .header = "{" T("dup.w", "F32", "[1]", "[0,4]") "," T("dup.w", "F32", "[1]", "[4,8]") "}", .data_len = 8},
    /* entries */
    {.what = "entry is a number", .header = "{\"num.w\":5}", .tensor = "num.w"},
    {.what = "entry is an array", .header = "{\"arr.w\":[1,2]}", .tensor = "arr.w"},
    {.what = "entry without dtype", .header = "{\"nodt.w\":{\"shape\":[1],\"data_offsets\":[0,4]}}",
     .data_len = 4, .tensor = "nodt.w"},
    {.what = "entry without shape", .header = "{\"nosh.w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}",
     .data_len = 4, .tensor = "nosh.w"},
    {.what = "entry without data_offsets", .header = "{\"nooff.w\":{\"dtype\":\"F32\",\"shape\":[1]}}",
     .data_len = 4, .tensor = "nooff.w"},
    {.what = "unknown dtype", .header = "{" T("unk.w", "F128", "[1]", "[0,16]") "}", .data_len = 16,
     .tensor = "unk.w"},
    {.what = "lower-case dtype", .header = "{" T("lc.w", "f32", "[1]", "[0,4]") "}", .data_len = 4, .tensor = "lc.w"},
    {.what = "dtype is a number", .header = "{\"dtn.w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}",
     .data_len = 4, .tensor = "dtn.w"},
    /* shapes */
    {.what = "shape is a number", .header = "{\"shn.w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}",
     .data_len = 4, .tensor = "shn.w"},
    {.what = "negative dim", .header = "{" T("neg.w", "F32", "[-1]", "[0,4]") "}", .data_len = 4, .tensor = "neg.w"},
    {.what = "fractional dim", .header = "{" T("frac.w", "F32", "[1.5]", "[0,4]") "}", .data_len = 4,
     .tensor = "frac.w"},
    {.what = "string dim", .header = "{" T("str.w", "F32", "[\"1\"]", "[0,4]") "}", .data_len = 4,
     .tensor = "str.w"},
    {.what = "dim past int64", .header = "{" T("big.w", "U8", "[9223372036854775808]", "[0,1]") "}", .data_len = 1},
    {.what = "huge dim", .header = "{" T("huge.w", "F32", "[4611686018427387904]", "[0,4]") "}", .data_len = 4,
     .tensor = "huge.w"},
    {.what = "shape * dtype size overflows",
     .header = "{" T("ovf.w", "F8_E4M3", "[4294967296,4294967296]", "[0,0]") "}", .tensor = "ovf.w"},
    /* Zero bytes, but the strides of [0, 2^32, 2^32] overflow int64 in kn_tensor_make. */
    {.what = "zero dim before dims whose product overflows",
     .header = "{" T("zovf.w", "F32", "[0,4294967296,4294967296]", "[0,0]") "}", .tensor = "zovf.w"},
    {.what = "7 dims", .header = "{" T("dims7.w", "F32", "[1,1,1,1,1,1,1]", "[0,4]") "}", .data_len = 4,
     .tensor = "dims7.w"},
    /* data_offsets */
    {.what = "shape needs more bytes than the offsets span", .header = "{" T("lie1.w", "F32", "[2]", "[0,4]") "}",
     .data_len = 8, .tensor = "lie1.w"},
    {.what = "shape needs fewer bytes than the offsets span", .header = "{" T("lie2.w", "F32", "[1]", "[0,8]") "}",
     .data_len = 8, .tensor = "lie2.w"},
    {.what = "offsets past the end of the data (truncated file)",
     .header = "{" T("trunc.w", "F32", "[4]", "[0,16]") "}", .data_len = 8, .tensor = "trunc.w"},
    {.what = "begin > end", .header = "{" T("rev.w", "F32", "[1]", "[8,4]") "}", .data_len = 8, .tensor = "rev.w"},
    {.what = "one offset", .header = "{" T("off1.w", "F32", "[1]", "[0]") "}", .data_len = 4, .tensor = "off1.w"},
    {.what = "three offsets", .header = "{" T("off3.w", "F32", "[1]", "[0,4,8]") "}", .data_len = 8,
     .tensor = "off3.w"},
    {.what = "offsets not an array", .header = "{" T("offs.w", "F32", "[1]", "\"0-4\"") "}", .data_len = 4,
     .tensor = "offs.w"},
    {.what = "negative offset", .header = "{" T("noff.w", "F32", "[1]", "[-4,0]") "}", .data_len = 4,
     .tensor = "noff.w"},
    {.what = "fractional offset", .header = "{" T("foff.w", "F32", "[1]", "[0,4.0]") "}", .data_len = 4,
     .tensor = "foff.w"},
    {.what = "overlapping tensors",
     .header = "{" T("ovl.a", "F32", "[2]", "[0,8]") "," T("ovl.b", "F32", "[2]", "[4,12]") "}", .data_len = 12,
     .tensor = "ovl.b"},
    {.what = "two tensors on the same bytes",
     .header = "{" T("same.a", "F32", "[1]", "[0,4]") "," T("same.b", "F32", "[1]", "[0,4]") "}", .data_len = 4,
     .tensor = "same.a"},
    /* An empty tensor between them must not hide that hid.big covers hid.late. */
    {.what = "overlap behind an empty tensor",
     .header = "{" T("hid.big", "F32", "[4]", "[0,16]") "," T("hid.empty", "F32", "[0]", "[4,4]") ","
                   T("hid.late", "F32", "[1]", "[8,12]") "}",
     .data_len = 16, .tensor = "hid.late"},
    /* __metadata__ */
    {.what = "__metadata__ is a string", .header = "{\"__metadata__\":\"x\"}", .tensor = "__metadata__"},
    {.what = "__metadata__ is an array", .header = "{\"__metadata__\":[\"x\"]}", .tensor = "__metadata__"},
    {.what = "__metadata__ value is a number", .header = "{\"__metadata__\":{\"k\":1}}", .tensor = "__metadata__"},
    {.what = "__metadata__ value is an object", .header = "{\"__metadata__\":{\"k\":{}}}", .tensor = "__metadata__"},
};

static void test_bad_files(void) {
    int n = (int)(sizeof bad_cases / sizeof bad_cases[0]);
    for (int i = 0; i < n; i++) {
        const bad_case *c = &bad_cases[i];
        char name[64], path[600];
        snprintf(name, sizeof name, "bad%02d.safetensors", i);
        tmp_path(path, sizeof path, name);
        if (c->raw) write_bytes(path, c->raw, c->raw_len, c->extend_to);
        else write_st(path, c->header, c->data_len);
        for (int mode = 0; mode < OPEN_MODES; mode++) {
            opened o;
            kn_err err;
            int rc = open_mode(&o, mode, path, &err);
            CHECK(rc != KN_OK, "bad file accepted (%s): %s", mode == OPEN_FILE ? "file" : "memory", c->what);
            if (rc == KN_OK) {
                close_opened(&o);
                continue;
            }
            CHECK(o.f == NULL, "%s: failed open left a file object", c->what);
            CHECK(err.code == rc, "%s: err.code %d != returned %d", c->what, err.code, rc);
            CHECK(strstr(err.msg, o.label), "%s: message does not name '%s': %s", c->what, o.label, err.msg);
            CHECK(!c->tensor || strstr(err.msg, c->tensor), "%s: message does not name '%s': %s", c->what,
                  c->tensor, err.msg);
            if (mode == OPEN_FILE) printf("rejected %-50s %s\n", c->what, err.msg);
            close_opened(&o);
        }
        unlink(path);
    }
}

/* Paths that are no safetensors file at all. */
static void test_open_errors(void) {
    char absent[600];
    tmp_path(absent, sizeof absent, "absent.safetensors");
    const struct {
        const char *path;
        int code;
    } cases[] = {{absent, KN_ERR_NOT_FOUND}, {tmp_dir, KN_ERR_IO}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kn_st_file *f = NULL;
        kn_err err;
        int rc = kn_st_open(&f, cases[i].path, &err);
        CHECK(rc == cases[i].code && !f, "opening %s gave %s, expected %s", cases[i].path, kn_status_name(rc),
              kn_status_name(cases[i].code));
        CHECK(rc == KN_OK || strstr(err.msg, cases[i].path), "message does not name the path: %s", err.msg);
        if (f) kn_st_close(f);
    }
}

/* ---- good hand-written files ---------------------------------------------- */

typedef struct good_case {
    const char *what;
    const char *header;
    size_t data_len;
    int count;
} good_case;

static const good_case good_cases[] = {
    {"empty header", "{}", 0, 0},
    {"metadata only", "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\xc3\xa9\"}}", 0, 0},
    /* Writers pad the header with spaces so the data starts 8-byte aligned. */
    {"space-padded header, keys in any order", "{\"a\":{\"data_offsets\":[0,4],\"shape\":[1],\"dtype\":\"F32\"}}   ",
     4, 1},
    {"header length not a multiple of 8", "{" T("u8", "U8", "[3]", "[0,3]") "}", 3, 1},
    /* torch writes an empty tensor at the running offset, where the next one begins. */
    {"empty tensor sharing its offset with the next",
     "{" T("z", "F32", "[0]", "[0,0]") "," T("n", "F32", "[1]", "[0,4]") "," T("z2", "BF16", "[2,0]", "[4,4]") "}", 4,
     3},
    {"scalar", "{" T("s", "F32", "[]", "[0,4]") "}", 4, 1},
    {"every dtype name", "{" T("f64", "F64", "[1]", "[0,8]") "," T("i64", "I64", "[1]", "[8,16]") ","
         T("i32", "I32", "[1]", "[16,20]") "," T("i16", "I16", "[1]", "[20,22]") "," T("i8", "I8", "[1]", "[22,23]") ","
         T("u8", "U8", "[1]", "[23,24]") "," T("b", "BOOL", "[1]", "[24,25]") "}", 25, 7},
};

static void test_good_files(void) {
    int n = (int)(sizeof good_cases / sizeof good_cases[0]);
    for (int i = 0; i < n; i++) {
        const good_case *c = &good_cases[i];
        char name[64], path[600];
        snprintf(name, sizeof name, "good%02d.safetensors", i);
        tmp_path(path, sizeof path, name);
        write_st(path, c->header, c->data_len);
        for (int mode = 0; mode < OPEN_MODES; mode++) {
            opened o;
            kn_err err;
            int rc = open_mode(&o, mode, path, &err);
            CHECK(rc == KN_OK, "good file rejected: %s: %s", c->what, err.msg);
            if (rc != KN_OK) continue;
            CHECK(kn_st_count(o.f) == c->count, "%s: %d tensors, expected %d", c->what, kn_st_count(o.f), c->count);
            CHECK(strcmp(kn_st_path(o.f), o.label) == 0, "%s: path '%s'", c->what, kn_st_path(o.f));
            for (int j = 0; j < kn_st_count(o.f); j++) {
                const kn_tensor *t = kn_st_at(o.f, j);
                CHECK(t && kn_st_find(o.f, t->name) == t, "%s: tensor %d not found by its name", c->what, j);
            }
            close_opened(&o);
        }
        unlink(path);
    }

    /* Metadata lookups, on the metadata-only file above. */
    char path[600];
    tmp_path(path, sizeof path, "meta.safetensors");
    write_st(path, good_cases[1].header, 0);
    kn_st_file *f;
    kn_err err;
    int rc = kn_st_open(&f, path, &err);
    CHECK(rc == KN_OK, "metadata-only file: %s", err.msg);
    if (rc == KN_OK) {
        const char *v = kn_st_metadata(f, "format"), *note = kn_st_metadata(f, "note");
        CHECK(v && strcmp(v, "pt") == 0, "metadata 'format' is %s", v ? v : "NULL");
        CHECK(note && strcmp(note, "caf\xc3\xa9") == 0, "metadata 'note' is %s", note ? note : "NULL");
        CHECK(kn_st_metadata(f, "absent") == NULL, "absent metadata key found");
        CHECK(kn_st_find(f, "__metadata__") == NULL, "__metadata__ listed as a tensor");
        kn_st_close(f);
    }
    unlink(path);
}

/* ---- writer round trip ---------------------------------------------------- */

typedef struct spec {
    const char *name;
    kn_dtype dtype;
    int ndim;
    int64_t ne[3];
} spec;

/* Every byte size here is a multiple of 8 but the scalar's, which goes last,
 * so each tensor of a written file can be checked for natural alignment. */
static const spec rt_specs[] = {
    {"f32.w", KN_F32, 2, {2, 3}},       {"i64.w", KN_I64, 1, {2}},
    {"bf16.w", KN_BF16, 2, {2, 2}},     {"f16.w", KN_F16, 1, {4}},
    {"e4m3.w", KN_F8_E4M3, 3, {2, 2, 2}}, {"e5m2.w", KN_F8_E5M2, 1, {8}},
    {"empty.w", KN_F32, 1, {0}},        {"empty2d.w", KN_BF16, 2, {3, 0}},
    {"scalar", KN_F32, 0, {0}},
};
enum { RT_COUNT = sizeof rt_specs / sizeof rt_specs[0] };

static void test_round_trip(void) {
    static uint8_t pool[RT_COUNT][64];
    kn_tensor t[RT_COUNT];
    for (int i = 0; i < RT_COUNT; i++) {
        for (int b = 0; b < 64; b++) pool[i][b] = (uint8_t)(i * 71 + b * 13 + 5);
        t[i] = kn_tensor_make(rt_specs[i].dtype, KN_DEV_CPU, pool[i], rt_specs[i].ndim, rt_specs[i].ne);
        t[i].name = rt_specs[i].name;
    }
    char path[600];
    tmp_path(path, sizeof path, "roundtrip.safetensors");
    kn_err err;
    int rc = kn_st_write(path, t, RT_COUNT, &err);
    CHECK(rc == KN_OK, "kn_st_write: %s", err.msg);
    if (rc != KN_OK) return;
    for (int mode = 0; mode < OPEN_MODES; mode++) {
        opened o;
        rc = open_mode(&o, mode, path, &err);
        CHECK(rc == KN_OK, "reopening a written file: %s", err.msg);
        if (rc != KN_OK) continue;
        CHECK(kn_st_count(o.f) == RT_COUNT, "%d tensors read back, %d written", kn_st_count(o.f), RT_COUNT);
        for (int i = 0; i < RT_COUNT && i < kn_st_count(o.f); i++) {
            const spec *s = &rt_specs[i];
            const kn_tensor *r = kn_st_at(o.f, i);
            CHECK(strcmp(r->name, s->name) == 0, "tensor %d is '%s', written as '%s' (file order)", i, r->name,
                  s->name);
            CHECK(kn_st_find(o.f, s->name) == r, "%s: kn_st_find disagrees with kn_st_at", s->name);
            CHECK(r->dtype == s->dtype && r->device == KN_DEV_CPU && r->ndim == s->ndim && r->scale == 1.0f,
                  "%s: dtype %s, ndim %d, scale %g", s->name, kn_dtype_name(r->dtype), r->ndim, r->scale);
            for (int d = 0; d < s->ndim && d < r->ndim; d++)
                CHECK(r->ne[d] == s->ne[d], "%s: dim %d is %lld, written %lld", s->name, d, (long long)r->ne[d],
                      (long long)s->ne[d]);
            CHECK(kn_tensor_is_contiguous(r), "%s: not contiguous", s->name);
            size_t nb = kn_tensor_nbytes(r);
            CHECK(nb == kn_tensor_nbytes(&t[i]), "%s: %zu bytes read back", s->name, nb);
            if (nb == 0 || nb != kn_tensor_nbytes(&t[i])) continue;
            CHECK(memcmp(r->data, pool[i], nb) == 0, "%s: data differs after the round trip", s->name);
            CHECK((uintptr_t)r->data % kn_dtype_size(r->dtype) == 0, "%s: data misaligned", s->name);
        }
        kn_tensor g;
        rc = kn_st_get(o.f, "no.such.tensor", &g, &err);
        CHECK(rc == KN_ERR_NOT_FOUND, "kn_st_get of an absent name returned %d", rc);
        CHECK(rc == KN_OK || (strstr(err.msg, o.label) && strstr(err.msg, "no.such.tensor")),
              "absent-name message names neither file nor tensor: %s", err.msg);
        CHECK(kn_st_find(o.f, "no.such.tensor") == NULL, "kn_st_find found an absent name");
        close_opened(&o);
    }
    unlink(path);

    /* An empty tensor list still makes a valid file. */
    rc = kn_st_write(path, NULL, 0, &err);
    CHECK(rc == KN_OK, "writing zero tensors: %s", err.msg);
    kn_st_file *f;
    if (rc == KN_OK && (rc = kn_st_open(&f, path, &err)) == KN_OK) {
        CHECK(kn_st_count(f) == 0, "zero-tensor file has %d tensors", kn_st_count(f));
        kn_st_close(f);
    }
    CHECK(rc == KN_OK, "zero-tensor file: %s", err.msg);
    unlink(path);
}

/* Tensors the writer must refuse rather than write a file that reads back wrong. */
static void test_write_errors(void) {
    static float buf[8];
    const int64_t ne[2] = {2, 4};
    kn_tensor a = kn_tensor_make(KN_F32, KN_DEV_CPU, buf, 2, ne);
    a.name = "w";
    kn_tensor unnamed = a, strided, meta_named = a;
    unnamed.name = NULL;
    meta_named.name = "__metadata__";
    kn_err err;
    if (kn_tensor_slice(&strided, &a, 1, 0, 2, &err) != KN_OK) {
        CHECK(0, "kn_tensor_slice: %s", err.msg);
        return;
    }
    char ok_path[600], missing_dir[600];
    tmp_path(ok_path, sizeof ok_path, "write_err.safetensors");
    tmp_path(missing_dir, sizeof missing_dir, "no/such/dir/x.safetensors");
    const struct {
        const char *what;
        const char *path;
        kn_tensor t[2];
        int n;
    } cases[] = {
        {"directory does not exist", missing_dir, {a}, 1},
        {"duplicate names", ok_path, {a, a}, 2},
        {"no name", ok_path, {unnamed}, 1},
        {"non-contiguous", ok_path, {strided}, 1},
        {"a tensor named __metadata__", ok_path, {meta_named}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kn_err_clear(&err);
        int rc = kn_st_write(cases[i].path, cases[i].t, cases[i].n, &err);
        CHECK(rc != KN_OK, "kn_st_write accepted: %s", cases[i].what);
        CHECK(rc == KN_OK || strstr(err.msg, cases[i].path), "%s: message does not name the file: %s",
              cases[i].what, err.msg);
        unlink(cases[i].path);
    }
}

/* Metadata entries and a dataless empty tensor, as SaveLatent writes them; bad entries refused. */
static void test_write_metadata(void) {
    static float v[3] = {1.5f, -2.0f, 0.25f};
    const int64_t three = 3, zero = 0;
    kn_tensor t[2] = {kn_tensor_make(KN_F32, KN_DEV_CPU, NULL, 1, &zero), kn_tensor_make(KN_F32, KN_DEV_CPU, v, 1, &three)};
    t[0].name = "empty";
    t[1].name = "v";
    const kn_st_meta meta[] = {{"prompt", "{\"1\": 2}"}, {"workflow", ""}};
    char path[600];
    tmp_path(path, sizeof path, "meta.safetensors");
    kn_err err;
    int rc = kn_st_write_meta(path, t, 2, meta, 2, &err);
    CHECK(rc == KN_OK, "kn_st_write_meta: %s", err.msg);
    kn_st_file *f;
    if (rc == KN_OK && (rc = kn_st_open(&f, path, &err)) == KN_OK) {
        const char *p = kn_st_metadata(f, "prompt"), *w = kn_st_metadata(f, "workflow");
        CHECK(p && strcmp(p, "{\"1\": 2}") == 0 && w && !*w, "metadata read back: '%s' '%s'", p ? p : "(none)",
              w ? w : "(none)");
        CHECK(kn_st_count(f) == 2 && kn_tensor_nbytes(kn_st_at(f, 0)) == 0 &&
                  memcmp(kn_st_at(f, 1)->data, v, sizeof v) == 0, "tensors after metadata");
        kn_st_close(f);
    }
    CHECK(rc == KN_OK, "reading the metadata file: %s", err.msg);
    const kn_st_meta twice[] = {{"k", "a"}, {"k", "b"}}, no_value[] = {{"k", NULL}}, bad_utf8[] = {{"k", "\xff"}};
    const struct {
        const char *what;
        const kn_st_meta *m;
    } bad[] = {{"repeated key", twice}, {"missing value", no_value}, {"invalid UTF-8", bad_utf8}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kn_err_clear(&err);
        rc = kn_st_write_meta(path, t, 2, bad[i].m, bad[i].m == twice ? 2 : 1, &err);
        CHECK(rc == KN_ERR_INVALID && strstr(err.msg, path) && strstr(err.msg, "'k'"), "%s: %d %s", bad[i].what, rc,
              err.msg);
    }
    unlink(path);
}

/* ---- fp8 scale_weight ----------------------------------------------------- */

static void test_fp8_scale(void) {
    static uint8_t w8[8] = {0x38, 0x40, 0xb8, 0x7e, 1, 2, 3, 4};
    static float quarter = 0.25f, three = 3.0f, pair[2] = {1, 2};
    static uint16_t two_bf16 = 0x4000; /* 2.0 */
    const int64_t four = 4, two = 2, zero = 0;
    const struct {
        const char *name;
        kn_dtype dtype;
        void *data;
        int ndim;
        const int64_t *ne;
    } specs[] = {
        {"q.weight", KN_F8_E4M3, w8, 1, &four},         {"q.scale_weight", KN_F32, &quarter, 0, NULL},
        {"r.weight", KN_F8_E5M2, w8, 1, &four},         {"r.scale_weight", KN_BF16, &two_bf16, 0, NULL},
        {"plain.weight", KN_F8_E4M3, w8, 1, &four},     {"bf.weight", KN_BF16, w8, 1, &two},
        {"bf.scale_weight", KN_F32, &three, 0, NULL},   {"vec.weight", KN_F8_E4M3, w8, 1, &four},
        {"vec.scale_weight", KN_F32, pair, 1, &two},    {"none.weight", KN_F8_E4M3, w8, 1, &four},
        {"none.scale_weight", KN_F32, pair, 1, &zero},
    };
    enum { N = sizeof specs / sizeof specs[0] };
    kn_tensor t[N];
    for (int i = 0; i < N; i++) {
        t[i] = kn_tensor_make(specs[i].dtype, KN_DEV_CPU, specs[i].data, specs[i].ndim, specs[i].ne);
        t[i].name = specs[i].name;
    }
    const struct {
        const char *name;
        int ok;
        float scale;
    } gets[] = {
        {"q.weight", 1, 0.25f},       {"r.weight", 1, 2.0f},
        {"plain.weight", 1, 1.0f},    /* no sibling: unscaled */
        {"bf.weight", 1, 1.0f},       /* scale_weight only qualifies fp8 weights */
        {"q.scale_weight", 1, 1.0f},
        {"vec.weight", 0, 0},         /* one float cannot hold a per-channel scale */
        {"none.weight", 0, 0},        /* an empty scale has no value to read */
    };
    char path[600];
    tmp_path(path, sizeof path, "fp8_scaled.safetensors");
    kn_err err;
    kn_st_file *f;
    int rc = kn_st_write(path, t, N, &err);
    if (rc == KN_OK) rc = kn_st_open(&f, path, &err);
    CHECK(rc == KN_OK, "fp8 scaled file: %s", err.msg);
    if (rc != KN_OK) return;
    for (size_t i = 0; i < sizeof gets / sizeof gets[0]; i++) {
        kn_tensor g;
        kn_err_clear(&err);
        rc = kn_st_get(f, gets[i].name, &g, &err);
        if (gets[i].ok) {
            CHECK(rc == KN_OK, "kn_st_get %s: %s", gets[i].name, err.msg);
            CHECK(rc != KN_OK || g.scale == gets[i].scale, "%s: scale %g, expected %g", gets[i].name, g.scale,
                  gets[i].scale);
            CHECK(rc != KN_OK || g.data == kn_st_find(f, gets[i].name)->data, "%s: kn_st_get moved the data",
                  gets[i].name);
        } else {
            CHECK(rc != KN_OK, "kn_st_get %s accepted an unusable scale_weight", gets[i].name);
            CHECK(rc == KN_OK || (strstr(err.msg, path) && strstr(err.msg, "scale_weight")),
                  "%s: message does not name file and scale tensor: %s", gets[i].name, err.msg);
        }
    }
    kn_st_close(f);
    unlink(path);
}

/* ---- prefix views ---------------------------------------------------------- */

/* A checkpoint's parts as views: names stripped, lookups (incl. an fp8
 * weight's scale_weight) within the view, data shared, messages naming the
 * part, and the mapping alive until the file and every view are closed, in
 * any order (each read below after the file's own close would fault on an
 * unmapped page). */
static void test_views(void) {
    static float a[2] = {1.5f, -2.0f}, b = 7.0f, z = 3.0f, quarter = 0.25f;
    static uint8_t w8[4] = {0x38, 0x40, 0xb8, 0x30};
    const int64_t two = 2, four = 4;
    const struct {
        const char *name;
        kn_dtype dtype;
        void *data;
        int ndim;
        const int64_t *ne;
    } specs[] = {
        {"model.diffusion_model.z", KN_F32, &z, 0, NULL},
        {"vae.decoder.a", KN_F32, a, 1, &two},
        {"text_encoders.t5xxl.transformer.x.weight", KN_F8_E4M3, w8, 1, &four},
        {"vaex.c", KN_F32, &b, 0, NULL}, /* shares "vae" but not "vae." */
        {"text_encoders.t5xxl.transformer.x.scale_weight", KN_F32, &quarter, 0, NULL},
        {"vae.b", KN_F32, &b, 0, NULL},
    };
    enum { N = sizeof specs / sizeof specs[0] };
    kn_tensor t[N];
    for (int i = 0; i < N; i++) {
        t[i] = kn_tensor_make(specs[i].dtype, KN_DEV_CPU, specs[i].data, specs[i].ndim, specs[i].ne);
        t[i].name = specs[i].name;
    }
    char path[600];
    tmp_path(path, sizeof path, "ckpt.safetensors");
    const kn_st_meta meta[] = {{"format", "pt"}};
    kn_err err;
    kn_st_file *f = NULL, *vae = NULL, *te = NULL, *x = NULL, *all = NULL, *none = NULL;
    int rc = kn_st_write_meta(path, t, N, meta, 1, &err);
    if (!rc) rc = kn_st_open(&f, path, &err);
    CHECK(rc == KN_OK, "checkpoint file: %s", err.msg);
    if (rc) return;
    CHECK(kn_st_view(&vae, f, "vae.", &err) == KN_OK && kn_st_view(&te, f, "text_encoders.t5xxl.transformer.", &err) ==
              KN_OK && kn_st_view(&all, f, "", &err) == KN_OK && kn_st_view(&none, f, "nope.", &err) == KN_OK,
          "views: %s", err.msg);
    if (!vae || !te || !all || !none) return;
    CHECK(kn_st_view(&x, te, "x.", &err) == KN_OK, "a view of a view: %s", err.msg);

    CHECK(kn_st_count(vae) == 2 && strcmp(kn_st_at(vae, 0)->name, "decoder.a") == 0 &&
              strcmp(kn_st_at(vae, 1)->name, "b") == 0,
          "vae. holds decoder.a and b in file order, prefix stripped");
    CHECK(kn_st_find(vae, "decoder.a") == kn_st_at(vae, 0) && kn_st_find(vae, "b") == kn_st_at(vae, 1) &&
              !kn_st_find(vae, "vae.b") && !kn_st_find(vae, "c") && !kn_st_find(vae, "z"),
          "lookups find the view's names only");
    CHECK(kn_st_find(vae, "decoder.a")->data == kn_st_find(f, "vae.decoder.a")->data, "the view shares the data");
    CHECK(strstr(kn_st_path(vae), path) && strstr(kn_st_path(vae), "vae.") && strcmp(kn_st_path(all), path) == 0,
          "paths: '%s', '%s'", kn_st_path(vae), kn_st_path(all));
    const char *fmt = kn_st_metadata(vae, "format");
    CHECK(fmt && strcmp(fmt, "pt") == 0, "metadata is the file's");
    size_t la, lb;
    CHECK(kn_st_data(vae, &la) == kn_st_data(f, &lb) && la == lb, "one data region");
    CHECK(kn_st_count(all) == N && kn_st_count(none) == 0 && !kn_st_find(none, "b"), "\"\" holds all, nope. none");
    for (int i = 0; i < kn_st_count(all); i++)
        CHECK(kn_st_find(all, kn_st_at(f, i)->name) && kn_st_find(all, kn_st_at(f, i)->name)->data == kn_st_at(f, i)->data,
              "\"\" finds %s", kn_st_at(f, i)->name);

    kn_tensor g;
    CHECK(kn_st_get(te, "x.weight", &g, &err) == KN_OK && g.scale == 0.25f && g.dtype == KN_F8_E4M3,
          "the fp8 weight's scale_weight is found within the view (%g)", g.scale);
    CHECK(kn_st_count(x) == 2 && kn_st_find(x, "weight") && kn_st_find(x, "scale_weight"), "x. of the t5 view");
    kn_err_clear(&err);
    CHECK(kn_st_get(vae, "encoder.q", &g, &err) == KN_ERR_NOT_FOUND && strstr(err.msg, path) &&
              strstr(err.msg, "vae.") && strstr(err.msg, "encoder.q"),
          "a missing tensor names the file, the part and the name: %s", err.msg);

    kn_st_close(f); /* the views keep the mapping */
    const float *pa = kn_st_find(vae, "decoder.a")->data;
    CHECK(pa[0] == 1.5f && pa[1] == -2.0f, "data readable after the file's close");
    kn_st_close(te); /* x keeps te, which keeps the mapping */
    CHECK(((const uint8_t *)kn_st_find(x, "weight")->data)[1] == 0x40, "a view of a closed view still reads");
    kn_st_close(vae);
    kn_st_close(all);
    kn_st_close(none);
    kn_st_close(x);
    kn_st_close(NULL);
    unlink(path);
}

/* ---- ComfyUI fixtures ----------------------------------------------------- */

static void test_fixtures(void) {
    char root[600];
    snprintf(root, sizeof root, "%s/tests/fixtures", KN_SOURCE_DIR);
    DIR *top = opendir(root);
    int files = 0;
    struct dirent *c, *e;
    while (top && (c = readdir(top))) {
        char dir[900];
        snprintf(dir, sizeof dir, "%s/%s", root, c->d_name);
        DIR *d = c->d_name[0] != '.' ? opendir(dir) : NULL;
        while (d && (e = readdir(d))) {
            size_t len = strlen(e->d_name);
            if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") != 0) continue;
            char path[1200];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            kn_st_file *f;
            kn_err err;
            int rc = kn_st_open(&f, path, &err);
            CHECK(rc == KN_OK, "fixture does not open: %s", err.msg);
            if (rc != KN_OK) continue;
            files++;
            CHECK(kn_st_count(f) > 0, "%s: no tensors", path);
            unsigned sink = 0;
            for (int i = 0; i < kn_st_count(f); i++) {
                const kn_tensor *t = kn_st_at(f, i);
                kn_tensor g;
                rc = kn_st_get(f, t->name, &g, &err);
                CHECK(rc == KN_OK && g.data == t->data, "%s: kn_st_get %s: %s", path, t->name, err.msg);
                size_t nb = kn_tensor_nbytes(t);
                if (nb) sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[nb - 1];
            }
            (void)sink;
            kn_st_close(f);
        }
        if (d) closedir(d);
    }
    if (top) closedir(top);
    printf("opened %d fixture files under %s\n", files, root);
}

/* ---- dtype conversions ---------------------------------------------------- */

typedef struct fmt {
    const char *name;
    kn_dtype dtype;
    int bits, mbits, bias;
    uint32_t max_code; /* largest finite positive code */
    int has_inf;       /* max_code + 1 is +inf (else it is NaN: e4m3fn) */
    int saturate;      /* finite overflow gives max (fp8) instead of rounding to inf */
    float (*dec)(uint32_t);
    uint32_t (*enc)(float);
} fmt;

static float dec_bf16(uint32_t c) { return kn_bf16_to_f32((uint16_t)c); }
static float dec_f16(uint32_t c) { return kn_f16_to_f32((uint16_t)c); }
static float dec_e4m3(uint32_t c) { return kn_f8e4m3_to_f32((uint8_t)c); }
static float dec_e5m2(uint32_t c) { return kn_f8e5m2_to_f32((uint8_t)c); }
static uint32_t enc_bf16(float f) { return kn_f32_to_bf16(f); }
static uint32_t enc_f16(float f) { return kn_f32_to_f16(f); }
static uint32_t enc_e4m3(float f) { return kn_f32_to_f8e4m3(f); }
static uint32_t enc_e5m2(float f) { return kn_f32_to_f8e5m2(f); }

static const fmt fmts[] = {
    {"BF16", KN_BF16, 16, 7, 127, 0x7f7f, 1, 0, dec_bf16, enc_bf16},
    {"F16", KN_F16, 16, 10, 15, 0x7bff, 1, 0, dec_f16, enc_f16},
    {"F8_E4M3", KN_F8_E4M3, 8, 3, 7, 0x7e, 0, 1, dec_e4m3, enc_e4m3},
    {"F8_E5M2", KN_F8_E5M2, 8, 2, 15, 0x7b, 1, 1, dec_e5m2, enc_e5m2},
};

/* Value of a positive magnitude code, reading an all-ones exponent as just
 * another binade: for IEEE formats that makes the inf code 2^(emax+1), the
 * value round-to-nearest-even overflows towards. */
static double ref_magnitude(const fmt *F, uint32_t code) {
    uint32_t e = code >> F->mbits, m = code & ((1u << F->mbits) - 1);
    if (e == 0) return ldexp(m, 1 - F->bias - F->mbits);
    return ldexp((double)((1u << F->mbits) | m), (int)e - F->bias - F->mbits);
}

static double ref_value(const fmt *F, uint32_t code) {
    uint32_t sign = code >> (F->bits - 1), mag = code & ((1u << (F->bits - 1)) - 1);
    double v = mag <= F->max_code ? ref_magnitude(F, mag)
             : F->has_inf && mag == F->max_code + 1 ? INFINITY : NAN;
    return sign ? -v : v;
}

/* Nearest-even code for a non-NaN x, by search over the format's values. */
static uint32_t ref_encode(const fmt *F, float x) {
    uint32_t sign = signbit(x) ? 1u << (F->bits - 1) : 0;
    double a = fabs((double)x);
    uint32_t top = F->saturate ? F->max_code : F->max_code + 1;
    if (isinf(x)) return sign | (F->has_inf ? F->max_code + 1 : F->max_code);
    if (a >= ref_magnitude(F, top)) return sign | top;
    uint32_t lo = 0, hi = top; /* value(lo) <= a < value(hi) */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ref_magnitude(F, mid) <= a) lo = mid;
        else hi = mid;
    }
    double mid = (ref_magnitude(F, lo) + ref_magnitude(F, hi)) / 2; /* exact: adjacent values */
    uint32_t code = a < mid ? lo : a > mid ? hi : (lo & 1 ? hi : lo);
    return sign | code;
}

static int same_float(float a, double ref) { return isnan(ref) ? isnan(a) : a == ref && !signbit(a) == !signbit(ref); }

static void check_encode(const fmt *F, float x) {
    uint32_t got = F->enc(x);
    if (isnan(x)) {
        CHECK(isnan(F->dec(got)), "%s: NaN encodes to non-NaN 0x%x", F->name, got);
        return;
    }
    uint32_t want = ref_encode(F, x);
    CHECK(got == want, "%s: %a encodes to 0x%x, expected 0x%x", F->name, x, got, want);
}

static uint32_t xorshift(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void test_dtype(const fmt *F) {
    int fails_before = failures;
    uint32_t ncodes = 1u << F->bits;
    /* Decoding, every code; then encoding its value gives the code back. */
    for (uint32_t c = 0; c < ncodes; c++) {
        float v = F->dec(c);
        double ref = ref_value(F, c);
        CHECK(same_float(v, ref), "%s: 0x%x decodes to %a, expected %a", F->name, c, v, ref);
        uint32_t back = F->enc(v);
        CHECK(isnan(ref) ? isnan(F->dec(back)) : back == c, "%s: 0x%x -> %a -> 0x%x", F->name, c, v, back);
    }
    /* The bulk converters agree with the scalar ones. */
    size_t esz = kn_dtype_size(F->dtype);
    uint8_t *codes = malloc(ncodes * esz), *again = malloc(ncodes * esz);
    float *wide = malloc(ncodes * sizeof(float)), *scaled = malloc(ncodes * sizeof(float));
    for (uint32_t c = 0; c < ncodes; c++) memcpy(codes + c * esz, &c, esz); /* little-endian */
    kn_to_f32(wide, codes, F->dtype, ncodes, 1.0f);
    kn_to_f32(scaled, codes, F->dtype, ncodes, 0.5f);
    kn_from_f32(again, F->dtype, wide, ncodes);
    for (uint32_t c = 0; c < ncodes; c++) {
        float v = F->dec(c);
        uint32_t back = 0;
        memcpy(&back, again + c * esz, esz);
        CHECK(same_float(wide[c], v), "%s: kn_to_f32(0x%x) = %a, scalar %a", F->name, c, wide[c], v);
        CHECK(same_float(scaled[c], v * 0.5), "%s: kn_to_f32(0x%x, scale .5) = %a", F->name, c, scaled[c]);
        CHECK(back == F->enc(wide[c]), "%s: kn_from_f32(%a) = 0x%x, scalar 0x%x", F->name, wide[c], back,
              F->enc(wide[c]));
    }
    free(codes);
    free(again);
    free(wide);
    free(scaled);
    /* Rounding: every representable value, every midpoint and its neighbours,
     * both signs, and past the top (where fp8 saturates and the rest overflow). */
    for (uint32_t k = 0; k <= F->max_code; k++) {
        double lo = ref_magnitude(F, k), hi = ref_magnitude(F, k + 1);
        float mid = (float)((lo + hi) / 2);
        const float xs[] = {(float)lo, mid, nextafterf(mid, 0), nextafterf(mid, INFINITY)};
        for (size_t j = 0; j < sizeof xs / sizeof xs[0]; j++) {
            check_encode(F, xs[j]);
            check_encode(F, -xs[j]);
        }
    }
    const float extremes[] = {FLT_MAX, INFINITY, NAN, 1e30f, 0x1p-149f, FLT_MIN, 0.0f};
    for (size_t j = 0; j < sizeof extremes / sizeof extremes[0]; j++) {
        check_encode(F, extremes[j]);
        check_encode(F, -extremes[j]);
    }
    /* And a million arbitrary f32 bit patterns (subnormals, NaNs and all). */
    uint32_t seed = 0x9e3779b9u;
    for (int i = 0; i < 1 << 20; i++) {
        uint32_t u = xorshift(&seed);
        float x;
        memcpy(&x, &u, 4);
        check_encode(F, x);
    }
    printf("%-8s conversions: %s\n", F->name, failures == fails_before ? "ok" : "FAILED");
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep progress lines in order with failures on stderr */
    const char *base = getenv("KN_TEST_TMP");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/kn_st_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        perror(tmp_dir);
        return 1;
    }
    test_bad_files();
    test_open_errors();
    test_good_files();
    test_round_trip();
    test_write_errors();
    test_write_metadata();
    test_fp8_scale();
    test_views();
    test_fixtures();
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) test_dtype(&fmts[i]);
    rmdir(tmp_dir);
    printf("test_safetensors: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
