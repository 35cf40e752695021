/* Empty latent nodes: EmptyLatentImage (4 channels) and EmptySD3LatentImage
 * (16), zeros [B, C, H/8, W/8] with downscale_ratio_spacial 8. Samplers widen
 * an all-zero latent to the model's channels and add a frame axis for
 * families whose latents have one, as ComfyUI's fix_empty_latent_channels does. */
#include "nodes/node.h"

static int empty_latent(kn_node_call *c, int64_t channels) {
    int64_t width, height, batch;
    if (kn_in_int(c, "width", &width) || kn_in_int(c, "height", &height) || kn_in_int(c, "batch_size", &batch))
        return c->err->code;
    kn_latent_obj *l = kn_latent_new();
    if (!l) return kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    int64_t ne[4] = {batch, channels, height / 8, width / 8};
    if (kn_tensor_zeros(&l->samples, KN_F32, 4, ne, c->err)) {
        kn_object_release(&l->base);
        return kn_node_fail(c, "batch_size", c->err->code, "latent [%lld, %lld, %lld, %lld]: %s", (long long)ne[0],
                            (long long)ne[1], (long long)ne[2], (long long)ne[3], c->err->msg);
    }
    l->downscale_ratio = 8;
    kn_out_object(c, 0, &l->base);
    return KN_OK;
}

static int empty_latent_image(kn_node_call *c) { return empty_latent(c, 4); }
static int empty_sd3_latent_image(kn_node_call *c) { return empty_latent(c, 16); }

const kn_node_def kn_nodes_latent[] = {
    {"EmptyLatentImage", empty_latent_image},
    {"EmptySD3LatentImage", empty_sd3_latent_image},
    {NULL, NULL},
};
