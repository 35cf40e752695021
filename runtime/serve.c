/* kiln serve: see runtime/serve.h. */
#include "runtime/serve.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/error.h"
#include "runtime/extra_paths.h"
#include "runtime/launch.h"
#include "web/preview.h"
#include "web/server.h"

#ifndef KN_DEFAULT_MODELS
#define KN_DEFAULT_MODELS "models"
#endif
#ifndef KN_WEB_UI_DIR
#define KN_WEB_UI_DIR "web/ui"
#endif
#ifndef KN_WORKFLOWS_DIR
#define KN_WORKFLOWS_DIR "workflows"
#endif

static const char help_text[] =
    "usage: kiln serve [OPTION]...\n"
    "ComfyUI's HTTP/WebSocket API and the browser UI (web/README.md). Options (ComfyUI's names):\n"
    "  --listen [ADDR[,ADDR]]   addresses to listen on (default 127.0.0.1; bare --listen: 0.0.0.0)\n"
    "  --port N                 port (default 8188)\n"
    "  --models DIR             ComfyUI models folder (default $KILN_MODELS, else the build's tiny set)\n"
    "  --output-directory DIR   SaveImage's folder (default output)\n"
    "  --input-directory DIR    LoadImage's and uploads' folder (default input)\n"
    "  --temp-directory DIR     PreviewImage's folder (default temp)\n"
    "  --user-directory DIR     /userdata and /settings storage (default user)\n"
    "  --extra-model-paths-config FILE  an extra_model_paths.yaml naming one models root\n"
    "  --max-upload-size MB     cap on every request body (default 100)\n"
    "  --memory-budget SIZE     refuse nodes estimated to need more (bytes or K/M/G/T; default 75% of RAM)\n"
    "  --front-end-root DIR     the browser UI's files (default the source tree's web/ui)\n"
    "  --preview-method M       latent previews: none (default), auto, latent2rgb, taesd (auto and taesd\n"
    "                           are latent2rgb: Kiln has no TAESD decoders)\n"
    "  --enable-cors-header [ORIGIN]  send CORS headers allowing ORIGIN (bare: *)\n"
    "  --allow-host NAME[,NAME]  Host names served besides loopback and --listen's (*: any)\n"
    "  --sp auto|ulysses|ring   under mpirun: how DiT attention is split across the ranks\n"
    "  --sp-ulysses U           under mpirun: the Ulysses degree\n"
    "  --sp-timeout S           under mpirun: seconds before a silent rank fails a render (default 120)\n"
    "  -h, --help               this help\n"
    "under mpirun -np N, rank 0 serves and every DiT forward is split across the N ranks\n";

/* A usage error: one plain line naming what was wrong, exit status 2. */
static int usage_error(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "kiln serve: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (kiln serve --help lists the options)\n");
    return 2;
}

int kn_cmd_serve(int argc, char **argv) {
    kn_server_config cfg = {"127.0.0.1", 8188, NULL, "output", "input", "temp", KN_WEB_UI_DIR, KN_WORKFLOWS_DIR,
                            (size_t)100 << 20, KN_PREC_FP32, NULL, "user", NULL, "none", NULL, 0};
    const char *yaml = NULL, *port = NULL, *upload = NULL, *budget = NULL;
    kn_launch launch;
    kn_launch_init(&launch);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(help_text, stdout);
            return 0;
        }
        int sp_opt = kn_launch_option(&launch, argc, argv, &i);
        if (sp_opt < 0) return 2; /* kn_launch_option named the flag */
        if (sp_opt) continue;
        if (strcmp(a, "--listen") == 0) { /* ComfyUI: a bare --listen means every interface */
            cfg.listen = i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 ? argv[++i] : "0.0.0.0";
            continue;
        }
        if (strcmp(a, "--enable-cors-header") == 0) { /* ComfyUI: bare means any origin */
            cfg.cors_origin = i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 ? argv[++i] : "*";
            continue;
        }
        const char **dst = strcmp(a, "--port") == 0                       ? &port
                           : strcmp(a, "--models") == 0                   ? &cfg.models_root
                           : strcmp(a, "--output-directory") == 0         ? &cfg.output_dir
                           : strcmp(a, "--input-directory") == 0          ? &cfg.input_dir
                           : strcmp(a, "--temp-directory") == 0           ? &cfg.temp_dir
                           : strcmp(a, "--extra-model-paths-config") == 0 ? &yaml
                           : strcmp(a, "--max-upload-size") == 0          ? &upload
                           : strcmp(a, "--memory-budget") == 0            ? &budget
                           : strcmp(a, "--front-end-root") == 0           ? &cfg.ui_dir
                           : strcmp(a, "--user-directory") == 0           ? &cfg.user_dir
                           : strcmp(a, "--preview-method") == 0           ? &cfg.preview_method
                           : strcmp(a, "--allow-host") == 0               ? &cfg.allow_hosts
                                                                          : NULL;
        if (!dst) return usage_error(a[0] == '-' ? "unknown option '%s'%s" : "unexpected argument '%s'%s", a, "");
        if (i + 1 >= argc) return usage_error("%s needs a value%s", a, "");
        *dst = argv[++i];
    }
    char *end;
    if (port) {
        long p = strtol(port, &end, 10);
        if (*end || p < 1 || p > 65535) return usage_error("--port: '%s' is not a port number (1 to 65535)%s", port, "");
        cfg.port = (int)p;
    }
    if (upload) {
        double mb = strtod(upload, &end);
        if (*end || !(mb > 0) || mb > 1 << 20)
            return usage_error("--max-upload-size: '%s' is not a size in MB (above 0, at most 1048576)%s", upload, "");
        cfg.max_body = (size_t)(mb * (1 << 20));
    }
    if (budget && kn_parse_size(budget, &cfg.memory_budget) != 0)
        return usage_error("--memory-budget: '%s' is not a size (bytes, or a number with K, M, G or T)%s", budget, "");
    kn_preview_method pm;
    if (kn_preview_method_parse(cfg.preview_method, &pm))
        return usage_error("--preview-method: '%s' is not one of none, auto, latent2rgb, taesd%s", cfg.preview_method, "");
    kn_err err;
    kn_err_clear(&err);
    char *yaml_root = NULL;
    if (yaml && kn_extra_paths_root_file(yaml, &yaml_root, &err)) {
        fprintf(stderr, "kiln serve: %s\n", err.msg);
        return 1;
    }
    const char *env = getenv("KILN_MODELS");
    if (!cfg.models_root) cfg.models_root = yaml_root ? yaml_root : env && *env ? env : KN_DEFAULT_MODELS;

    /* under mpirun: rank 0 serves, the others run its DiT forwards */
    char *models = realpath(cfg.models_root, NULL), launch_what[8192];
    snprintf(launch_what, sizeof launch_what, "serve models=%s", models ? models : cfg.models_root);
    free(models);
    if (kn_launch_start(&launch, launch_what, &err)) {
        fprintf(stderr, "kiln serve: %s\n", err.msg);
        free(yaml_root);
        return kn_launch_end(&launch, 1);
    }
    if (launch.rank > 0) {
        free(yaml_root);
        return kn_launch_follow(&launch, cfg.precision);
    }
    cfg.ranks = launch.ranks;

    /* Blocked before any thread starts, so every thread inherits the mask
     * and the signals wait for sigwait below. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client closing mid-reply must not end the server */

    kn_server *s = NULL;
    int status = 0;
    if (kn_server_start(&s, &cfg, &err)) {
        fprintf(stderr, "kiln serve: %s\n", err.msg);
        status = 1;
    } else {
        fprintf(stderr, "kiln serve: models %s, output %s, input %s, temp %s\n", cfg.models_root, cfg.output_dir,
                cfg.input_dir, cfg.temp_dir);
        fprintf(stderr, "To see the GUI go to: http://%s:%d\n",
                strcmp(cfg.listen, "0.0.0.0") == 0 ? "127.0.0.1" : cfg.listen, cfg.port);
        int sig;
        sigwait(&stop, &sig);
        fprintf(stderr, "kiln serve: stopping\n");
        kn_server_stop(s);
    }
    free(yaml_root);
    return kn_launch_end(&launch, status);
}
