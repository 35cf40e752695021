/* Tests for the Wan21 latent format (kn_latent_wan21, pipelines/sampling/samplers.h):
 * process_in against ComfyUI's formula with its constants, process_out as its
 * inverse, and the shape check. The VAE itself is covered by the
 * qwen_image_vae fixture. */
#include <math.h>
#include <stdio.h>

#include "pipelines/sampling/samplers.h"
#include "check.h"

int main(void) {
    kn_err err;
    enum { B = 2, C = 16, S = 6 };
    float x[B * C * S], z[B * C * S], back[B * C * S];
    for (int i = 0; i < B * C * S; i++) x[i] = (float)((i * 37) % 19) / 3.0f - 3.0f;
    const int64_t ne[5] = {B, C, 1, 2, 3};
    kn_tensor tx = kn_tensor_make(KN_F32, KN_DEV_CPU, x, 5, ne);
    kn_tensor tz = kn_tensor_make(KN_F32, KN_DEV_CPU, z, 5, ne);
    kn_tensor tb = kn_tensor_make(KN_F32, KN_DEV_CPU, back, 5, ne);
    CHECK(kn_latent_process_in(&kn_latent_wan21, &tx, &tz, &err) == KN_OK, "%s", err.msg);
    CHECK(kn_latent_process_out(&kn_latent_wan21, &tz, &tb, &err) == KN_OK, "%s", err.msg);
    /* channel 0: mean -0.7571, std 2.8184; channel 15: mean -0.2921, std 1.916 */
    double worst_in = 0, worst_back = 0;
    for (int b = 0; b < B; b++)
        for (int s = 0; s < S; s++) {
            int i0 = (b * C + 0) * S + s, i15 = (b * C + 15) * S + s;
            worst_in = fmax(worst_in, fabs(z[i0] - (x[i0] + 0.7571) / 2.8184));
            worst_in = fmax(worst_in, fabs(z[i15] - (x[i15] + 0.2921) / 1.916));
        }
    for (int i = 0; i < B * C * S; i++) worst_back = fmax(worst_back, fabs(back[i] - x[i]));
    CHECK(worst_in < 1e-6, "process_in off by %.3e", worst_in);
    CHECK(worst_back < 1e-5, "process_out(process_in(x)) off by %.3e", worst_back);
    kn_tensor wrong = kn_tensor_make(KN_F32, KN_DEV_CPU, x, 3, (int64_t[]){B, 12, 8});
    CHECK(kn_latent_process_in(&kn_latent_wan21, &wrong, &wrong, &err) == KN_ERR_SHAPE, "12 channels accepted");
    printf("test_wan_vae: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
