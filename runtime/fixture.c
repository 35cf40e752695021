/* `kiln fixture DIR...`: the table of component runners. */
#include "runtime/fixture.h"

#include <stdio.h>

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

static const kn_fixture_runner runners[] = {
    {"qwen_image_dit", kn_dit_fixture},
    {"flux_dit", kn_dit_fixture},
    {"zimage_dit", kn_dit_fixture},
    {"qwen_image_vae", kn_wan_vae_fixture},
    {"flux_vae", kn_kl_vae_fixture},
    {"qwen25_vl_text", kn_qwen25vl_fixture},
    {"qwen3_text", kn_qwen3_fixture},
    {"clip_l", kn_clip_l_fixture},
    {"t5_xxl", kn_t5_fixture},
    {"sampling", kn_sampling_fixture},
    {"lora_qwen_image", kn_lora_fixture},
    {"lora_flux", kn_lora_fixture},
    {"lora_zimage", kn_lora_fixture},
    {NULL, NULL},
};

int kn_cmd_fixture(int argc, char **argv) {
    if (argc < 1) {
        fprintf(stderr, "usage: kiln fixture DIR...\n");
        return 2;
    }
    int status = 0;
    for (int i = 0; i < argc; i++) {
        kn_err err;
        kn_err_clear(&err);
        int failed = 0;
        if (kn_fixture_run_dir(argv[i], runners, &failed, &err) != KN_OK) {
            fprintf(stderr, "kiln fixture: %s\n", err.msg);
            status = 1;
        }
    }
    return status;
}
