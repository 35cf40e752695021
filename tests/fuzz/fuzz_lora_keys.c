/* libFuzzer target for LoRA files against a model (loras/: key mapping, factor checks, the
 * merge and runtime-adapter paths).
 *
 * Each input is a safetensors file, mapped (through a memfd, as kn_lora_load reads a path)
 * onto a small Flux.1 weight table whose keys exercise the mapping rules: a fused qkv the
 * diffusers to_q/to_k/to_v slice, single_blocks' linear1 with proj_mlp after it, the
 * half-swapped norm_out modulation, img_in (reshape_weight), a bias. Loading may only fail
 * with an error naming the file; a loaded LoRA applied at strength 1 and removed must leave
 * every slot bit for bit as it was. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "loras/lora.h"
#include "pipelines/flux/dit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { N_SLOTS = 6 };
static const struct {
    const char *key;
    int64_t ne[2];
    int ndim, linear;
} slots[N_SLOTS] = {
    {"double_blocks.0.img_attn.qkv.weight", {24, 8}, 2, 1},
    {"double_blocks.0.img_attn.qkv.bias", {24, 1}, 1, 0},
    {"double_blocks.0.img_attn.proj.weight", {8, 8}, 2, 1},
    {"single_blocks.0.linear1.weight", {40, 8}, 2, 1},
    {"final_layer.adaLN_modulation.1.weight", {16, 8}, 2, 1},
    {"img_in.weight", {8, 4}, 2, 1},
};
static kn_tensor tensors[N_SLOTS], originals[N_SLOTS];
static kn_adapter_list lists[N_SLOTS];
static kn_lora_model *model;

static void setup(void) {
    kn_err err;
    const kn_dit_family *f = &kn_flux_dev_dit;
    if (kn_lora_model_new(&model, f->lora_keys, f->n_lora_keys, &err)) abort();
    for (int i = 0; i < N_SLOTS; i++) {
        if (kn_tensor_new(&tensors[i], KN_F32, KN_DEV_CPU, slots[i].ndim, slots[i].ne, &err)) abort();
        float *v = tensors[i].data;
        for (int64_t k = 0; k < kn_tensor_numel(&tensors[i]); k++) v[k] = (float)((k * 37 + i) % 17) / 16.0f - 0.5f;
        originals[i] = tensors[i];
        if (kn_lora_model_add(model, slots[i].key, &tensors[i], slots[i].linear ? &lists[i] : NULL, &err)) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model) setup();
    int fd = memfd_create("lora", MFD_CLOEXEC);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size)) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    kn_lora *l = NULL;
    kn_err err;
    kn_err_clear(&err);
    int rc = kn_lora_load(&l, path, model, &err);
    if (rc != KN_OK && (l || (rc != KN_ERR_NOMEM && !strstr(err.msg, path)))) abort(); /* errors name the file */
    if (rc == KN_OK) {
        kn_lora_use use = {l, 1.0};
        kn_lora_model_apply(model, &use, 1, NULL, &err); /* may refuse (a widened weight, ...) */
        if (kn_lora_model_apply(model, NULL, 0, NULL, &err)) abort();
        for (int i = 0; i < N_SLOTS; i++)
            if (tensors[i].data != originals[i].data || tensors[i].ne[0] != originals[i].ne[0] ||
                tensors[i].ne[1] != originals[i].ne[1] || lists[i].n != 0)
                abort(); /* back to the file view */
        kn_lora_free(l);
    }
    close(fd);
    return 0;
}
