/* `kiln fixture DIR...`: the table of component runners. */
#include "runtime/fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/comm.h"
#include "runtime/launch.h"

#include "pipelines/fixture.h"

/* Each runner lives beside the code it checks. */
int kn_dit_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_t5_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_clip_l_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_qwen3_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_wan_vae_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_kl_vae_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_qwen25vl_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_sampling_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_lora_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_qwen_vision_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);
int kn_qwen_edit_text_fixture(const kn_fixture_case *c, kn_fixture_results *res, kn_err *err);

static const kn_fixture_runner runners[] = {
    {"qwen_image_dit", kn_dit_fixture},
    {"flux_dit", kn_dit_fixture},
    {"zimage_dit", kn_dit_fixture},
    {"qwen_image_vae", kn_wan_vae_fixture},
    {"flux_vae", kn_kl_vae_fixture},
    {"qwen25_vl_text", kn_qwen25vl_fixture},
    {"qwen25_vl_vision", kn_qwen_vision_fixture},
    {"qwen_image_edit_text", kn_qwen_edit_text_fixture},
    {"qwen3_text", kn_qwen3_fixture},
    {"clip_l", kn_clip_l_fixture},
    {"t5_xxl", kn_t5_fixture},
    {"sampling", kn_sampling_fixture},
    {"lora_qwen_image", kn_lora_fixture},
    {"lora_flux", kn_lora_fixture},
    {"lora_zimage", kn_lora_fixture},
    {NULL, NULL},
};

/* Under mpirun every rank runs the same folders (DiT forwards sharded across
 * them, --sp choosing how); rank 0 prints. */
int kn_cmd_fixture(int argc, char **argv) {
    kn_launch launch;
    kn_launch_init(&launch);
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: kiln fixture [OPTION]... DIR...\n"
                   "Run every case of fixture folders (shared format) and print each output's relative L2 error;\n"
                   "exit 1 on any miss.\n"
                   "  --sp auto|ulysses|ring   under mpirun: how DiT attention is split across the ranks\n"
                   "  --sp-ulysses U           under mpirun: the Ulysses degree\n"
                   "  --sp-timeout S           under mpirun: seconds before a silent rank fails (default 120)\n"
                   "  -h, --help               this help\n");
            return 0;
        }
        int sp_opt = kn_launch_option(&launch, argc, argv, &i);
        if (sp_opt < 0) return 2;
        if (!sp_opt && argv[i][0] == '-') {
            fprintf(stderr, "kiln fixture: unknown option '%s' (kiln fixture --help lists the options)\n", argv[i]);
            return 2;
        }
        if (!sp_opt) argv[n++] = argv[i];
    }
    argc = n;
    if (argc < 1) {
        fprintf(stderr, "kiln fixture: no fixture folder given (kiln fixture --help lists the options)\n");
        return 2;
    }
    kn_err err;
    kn_err_clear(&err);
    kn_comm *world = NULL;
    kn_sp *sp = NULL;
    if (kn_comm_world(&world, &err) || kn_sp_new(&sp, world, launch.mode, launch.ulysses, &err)) {
        fprintf(stderr, "kiln fixture: %s\n", err.msg);
        kn_comm_free(world);
        return 1;
    }
    kn_comm_set_timeout(world, launch.timeout_s);
    if (kn_comm_rank(world) > 0 && !freopen("/dev/null", "w", stdout)) {
        fprintf(stderr, "kiln fixture: rank %d: cannot silence stdout\n", kn_comm_rank(world));
    }
    int status = 0;
    for (int i = 0; i < argc; i++) {
        kn_err_clear(&err);
        int failed = 0;
        if (kn_fixture_run_dir(argv[i], runners, kn_sp_size(sp) > 1 ? sp : NULL, &failed, &err) != KN_OK) {
            fprintf(stderr, "kiln fixture: %s\n", err.msg);
            status = 1;
        }
    }
    kn_sp_free(sp);
    if (kn_comm_broken(world)) kn_comm_abort(world, 1); /* the other ranks may be waiting in a collective */
    kn_comm_free(world);
    return status;
}
