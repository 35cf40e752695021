/* web/guard.h's Host allowlist and origin guard, and web/http.h's path
 * scrubbing, on the header values browsers and attackers send. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "web/guard.h"
#include "web/http.h"

static kn_guard *guard(const char *listen, const char *allow, bool check_origin) {
    kn_guard *g = NULL;
    kn_err err;
    int rc = kn_guard_new(&g, listen, 8188, allow, check_origin, &err);
    CHECK(rc == KN_OK, "kn_guard_new(%s, %s): %s", listen, allow ? allow : "-", err.msg);
    return g;
}

static bool ok(const kn_guard *g, const char *host, const char *origin) { return !kn_guard_request(g, host, origin); }

static void test_hosts(void) {
    kn_guard *g = guard("127.0.0.1", NULL, true);
    const char *good[] = {"127.0.0.1:8188", "127.0.0.1", "localhost:8188", "LOCALHOST", "[::1]:8188", "[::1]"};
    const char *bad[] = {"evil.com", "x.localhost:8188", "localhost.:8188", "localhost.", "127.0.0.1.nip.io",
                         "10.0.0.5:8188", "", ":8188", "[::1", "localhost:8188:1", "[::1]x", "127.0.0.2"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) CHECK(ok(g, good[i], NULL), "Host %s refused", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) CHECK(!ok(g, bad[i], NULL), "Host '%s' passed", bad[i]);
    CHECK(ok(g, NULL, NULL), "no Host (HTTP/1.0) refused");
    kn_guard_free(g);

    g = guard("0.0.0.0", "kiln.lan, Proxy.Example.com", true); /* wildcard: every IP literal, and the named hosts */
    CHECK(ok(g, "192.168.1.5:8188", NULL) && ok(g, "[fe80::1]:8188", NULL), "IP literals refused under 0.0.0.0");
    CHECK(ok(g, "kiln.lan:8188", NULL) && ok(g, "proxy.example.com", NULL), "--allow-host names refused");
    CHECK(!ok(g, "evil.com", NULL) && !ok(g, "kiln.lan.", NULL), "a DNS name off the list passed");
    kn_guard_free(g);

    g = guard("192.168.1.5,[::]", NULL, true); /* listen addresses join the list; "::" is a wildcard too */
    CHECK(ok(g, "192.168.1.5:8188", NULL) && ok(g, "10.1.1.1", NULL), "a --listen address refused");
    kn_guard_free(g);

    g = guard("127.0.0.1", "*", true);
    CHECK(ok(g, "anything.example", NULL), "--allow-host '*' refused a Host");
    kn_guard_free(g);

    kn_guard *none = NULL;
    kn_err err;
    CHECK(kn_guard_new(&none, "127.0.0.1", 8188, "a,[bad", true, &err) == KN_ERR_INVALID && !none &&
              strcmp(err.msg, "--allow-host: '[bad' is not a host name") == 0,
          "a malformed --allow-host accepted: %s", err.msg);
}

static void test_origins(void) {
    kn_guard *g = guard("127.0.0.1", NULL, true);
    CHECK(ok(g, "127.0.0.1:8188", "http://127.0.0.1:8188"), "same origin refused");
    CHECK(ok(g, "localhost:8188", "http://localhost:8188"), "same origin (localhost) refused");
    CHECK(ok(g, "127.0.0.1", "http://127.0.0.1:8188") && ok(g, "127.0.0.1:8188", "http://127.0.0.1"),
          "ports are compared only when both sides name one");
    CHECK(ok(g, "[::1]:8188", "http://[::1]:8188"), "same origin (IPv6) refused");
    const char *bad[] = {"http://evil.com", "null", "http://127.0.0.1:1", "http://localhost:8188", "file://",
                         "http://127.0.0.1:8188.evil.com", "http://[::1]:8188"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(!ok(g, "127.0.0.1:8188", bad[i]), "Origin %s passed", bad[i]);
    CHECK(!ok(g, NULL, "http://127.0.0.1:8188"), "an Origin without a Host passed");
    kn_guard_free(g);
    g = guard("127.0.0.1", NULL, false); /* --enable-cors-header: origins are not checked, hosts are */
    CHECK(ok(g, "127.0.0.1:8188", "http://evil.com") && !ok(g, "evil.com", "http://evil.com"),
          "--enable-cors-header: the origin guard is off, the Host allowlist on");
    kn_guard_free(g);
}

static void test_scrub(void) {
    static const char *cases[][2] = {
        {"cannot open '/srv/models/vae/x.safetensors': No such file", "cannot open 'x.safetensors': No such file"},
        {"/abs/dir/file.json: bad header", "file.json: bad header"},
        {"not in the loras folder of /var/lib/kiln/models", "not in the loras folder of models"},
        {"a (/a/b/c) and \"/d/e/\"", "a (c) and \"e/\""},
        {"diffusion_models/x.safetensors and /etc", "diffusion_models/x.safetensors and /etc"},
        {"ratio 1/2, key=/x/y", "ratio 1/2, key=y"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[256];
        strcpy(buf, cases[i][0]);
        kn_http_scrub(buf);
        CHECK(strcmp(buf, cases[i][1]) == 0, "scrub '%s' gave '%s', want '%s'", cases[i][0], buf, cases[i][1]);
    }
    json_t *v = json_pack("{s:[s, {s:s}], s:i}", "a", "/x/y/z.png", "b", "at /p/q", "n", 3);
    kn_http_scrub_json(v);
    json_t *want = json_pack("{s:[s, {s:s}], s:i}", "a", "z.png", "b", "at q", "n", 3);
    CHECK(json_equal(v, want), "scrubbing JSON strings");
    json_decref(v);
    json_decref(want);
}

int main(void) {
    test_hosts();
    test_origins();
    test_scrub();
    printf("test_web_guard: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
