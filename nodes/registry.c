/* The node classes Kiln supports, transcribed from ComfyUI at
 * hiddenswitch/pip-and-uv-installable-ComfyUI 87606c5f (comfy/nodes/base_nodes.py,
 * comfy_extras/nodes/nodes_*.py): names, input order, types, defaults, ranges,
 * choices, tooltips and descriptions exactly as GET /object_info reports them.
 * tests/unit/test_workflow.c compares every class against
 * tests/fixtures/workflows/object_info.json. This file holds the table and
 * its lookups; registry_json.c writes the JSON views. */
#include "nodes/registry.h"

#include <stdio.h>
#include <string.h>

#include "kernels/json.h"

/* ---- shared choice lists ------------------------------------------------ */

static const char *const kn_sampler_names[] = {
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu",
    "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v",
    "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
    "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2", NULL};
static const char *const kn_scheduler_names[] = {
    "normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta",
    "linear_quadratic", "kl_optimal", NULL};
static const char *const kn_upscale_methods[] = {"nearest-exact", "bilinear", "area", "bicubic", "lanczos", NULL};
static const char *const unet_loader_weight_dtype[] = {"default", "fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fn_fast", NULL};
static const char *const clip_loader_type[] = {
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
    "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2",
    "ovis", NULL};
static const char *const dual_clip_loader_type[] = {
    "sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
    "kandinsky5", "kandinsky5_image", "ltxv", "newbie", "ace", NULL};
static const char *const clip_loader_device[] = {"default", "cpu", NULL};
static const char *const vae_pixel_space[] = {"pixel_space", NULL}; /* listed after the vae folder's files */
static const char *const k_sampler_advanced_add_noise[] = {"enable", "disable", NULL};
static const char *const k_sampler_advanced_return_with_leftover_noise[] = {"disable", "enable", NULL};
static const char *const image_scale_crop[] = {"disabled", "center", NULL};
/* Output nodes receive the prompt and the UI workflow to embed in their files. */
static const char *const kn_hidden_prompt[] = {"prompt", "PROMPT", "extra_pnginfo", "EXTRA_PNGINFO", NULL};

/* ---- inputs and outputs per class ---------------------------------------- */

/* CheckpointLoaderSimple */
static const kn_input_spec checkpoint_loader_simple_in[] = {
    {"ckpt_name", KN_INPUT_COMBO, .folder = "checkpoints", .tooltip = "The name of the checkpoint (model) to load."},
};
static const kn_output_spec checkpoint_loader_simple_out[] = {{.type = "MODEL"}, {.type = "CLIP"}, {.type = "VAE"}};

/* UNETLoader */
static const kn_input_spec unet_loader_in[] = {
    {"unet_name", KN_INPUT_COMBO, .folder = "diffusion_models"},
    {"weight_dtype", KN_INPUT_COMBO, .options = unet_loader_weight_dtype},
};
static const kn_output_spec unet_loader_out[] = {{.type = "MODEL"}};

/* CLIPLoader */
static const kn_input_spec clip_loader_in[] = {
    {"clip_name", KN_INPUT_COMBO, .folder = "text_encoders"},
    {"type", KN_INPUT_COMBO, .options = clip_loader_type},
    {"device", KN_INPUT_COMBO, .section = KN_SECTION_OPTIONAL, .options = clip_loader_device, .flags = KN_INPUT_ADVANCED},
};
static const kn_output_spec clip_loader_out[] = {{.type = "CLIP"}};

/* DualCLIPLoader */
static const kn_input_spec dual_clip_loader_in[] = {
    {"clip_name1", KN_INPUT_COMBO, .folder = "text_encoders"},
    {"clip_name2", KN_INPUT_COMBO, .folder = "text_encoders"},
    {"type", KN_INPUT_COMBO, .options = dual_clip_loader_type},
    {"device", KN_INPUT_COMBO, .section = KN_SECTION_OPTIONAL, .options = clip_loader_device, .flags = KN_INPUT_ADVANCED},
};
static const kn_output_spec dual_clip_loader_out[] = {{.type = "CLIP"}};

/* VAELoader */
static const kn_input_spec vae_loader_in[] = {
    {"vae_name", KN_INPUT_COMBO, .folder = "vae", .options = vae_pixel_space},
};
static const kn_output_spec vae_loader_out[] = {{.type = "VAE"}};

/* LoraLoader */
static const kn_input_spec lora_loader_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL", .tooltip = "The diffusion model the LoRA will be applied to."},
    {"clip", KN_INPUT_LINK, .type = "CLIP", .tooltip = "The CLIP model the LoRA will be applied to."},
    {"lora_name", KN_INPUT_COMBO, .folder = "loras", .tooltip = "The name of the LoRA."},
    {"strength_model", KN_INPUT_FLOAT, .def = 1.0, .min = -100.0, .max = 100.0, .step = 0.01, .tooltip = "How strongly to modify the diffusion model. This value can be negative."},
    {"strength_clip", KN_INPUT_FLOAT, .def = 1.0, .min = -100.0, .max = 100.0, .step = 0.01, .tooltip = "How strongly to modify the CLIP model. This value can be negative."},
};
static const kn_output_spec lora_loader_out[] = {{.type = "MODEL"}, {.type = "CLIP"}};

/* LoraLoaderModelOnly */
static const kn_input_spec lora_loader_model_only_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"lora_name", KN_INPUT_COMBO, .folder = "loras"},
    {"strength_model", KN_INPUT_FLOAT, .def = 1.0, .min = -100.0, .max = 100.0, .step = 0.01},
};
static const kn_output_spec lora_loader_model_only_out[] = {{.type = "MODEL"}};

/* CLIPTextEncode */
static const kn_input_spec clip_text_encode_in[] = {
    {"text", KN_INPUT_STRING, .flags = KN_INPUT_MULTILINE | KN_INPUT_DYNAMIC_PROMPTS, .tooltip = "The text to be encoded."},
    {"clip", KN_INPUT_LINK, .type = "CLIP", .tooltip = "The CLIP model used for encoding the text."},
};
static const kn_output_spec clip_text_encode_out[] = {{.type = "CONDITIONING"}};

/* ConditioningCombine */
static const kn_input_spec conditioning_combine_in[] = {
    {"conditioning_1", KN_INPUT_LINK, .type = "CONDITIONING"},
    {"conditioning_2", KN_INPUT_LINK, .type = "CONDITIONING"},
};
static const kn_output_spec conditioning_combine_out[] = {{.type = "CONDITIONING"}};

/* ConditioningZeroOut */
static const kn_input_spec conditioning_zero_out_in[] = {
    {"conditioning", KN_INPUT_LINK, .type = "CONDITIONING"},
};
static const kn_output_spec conditioning_zero_out_out[] = {{.type = "CONDITIONING"}};

/* EmptyLatentImage */
static const kn_input_spec empty_latent_image_in[] = {
    {"width", KN_INPUT_INT, .def = 512, .min = 16, .max = 16384, .step = 8, .tooltip = "The width of the latent images in pixels."},
    {"height", KN_INPUT_INT, .def = 512, .min = 16, .max = 16384, .step = 8, .tooltip = "The height of the latent images in pixels."},
    {"batch_size", KN_INPUT_INT, .def = 1, .min = 1, .max = 4096, .tooltip = "The number of latent images in the batch."},
};
static const kn_output_spec empty_latent_image_out[] = {{.type = "LATENT"}};

/* KSampler */
static const kn_input_spec k_sampler_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL", .tooltip = "The model used for denoising the input latent."},
    {"seed", KN_INPUT_INT, .def = 0, .min = 0, .max = KN_SEED_MAX, .flags = KN_INPUT_CONTROL_AFTER_GENERATE, .tooltip = "The random seed used for creating the noise."},
    {"steps", KN_INPUT_INT, .def = 20, .min = 1, .max = 10000, .tooltip = "The number of steps used in the denoising process."},
    {"cfg", KN_INPUT_FLOAT, .def = 8.0, .min = 0.0, .max = 100.0, .step = 0.1, .round = 0.01, .tooltip = "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."},
    {"sampler_name", KN_INPUT_COMBO, .options = kn_sampler_names, .tooltip = "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."},
    {"scheduler", KN_INPUT_COMBO, .options = kn_scheduler_names, .tooltip = "The scheduler controls how noise is gradually removed to form the image."},
    {"positive", KN_INPUT_LINK, .type = "CONDITIONING", .tooltip = "The conditioning describing the attributes you want to include in the image."},
    {"negative", KN_INPUT_LINK, .type = "CONDITIONING", .tooltip = "The conditioning describing the attributes you want to exclude from the image."},
    {"latent_image", KN_INPUT_LINK, .type = "LATENT", .tooltip = "The latent image to denoise."},
    {"denoise", KN_INPUT_FLOAT, .def = 1.0, .min = 0.0, .max = 1.0, .step = 0.01, .tooltip = "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."},
};
static const kn_output_spec k_sampler_out[] = {{.type = "LATENT"}};

/* KSamplerAdvanced */
static const kn_input_spec k_sampler_advanced_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"add_noise", KN_INPUT_COMBO, .options = k_sampler_advanced_add_noise},
    {"noise_seed", KN_INPUT_INT, .def = 0, .min = 0, .max = KN_SEED_MAX, .flags = KN_INPUT_CONTROL_AFTER_GENERATE},
    {"steps", KN_INPUT_INT, .def = 20, .min = 1, .max = 10000},
    {"cfg", KN_INPUT_FLOAT, .def = 8.0, .min = 0.0, .max = 100.0, .step = 0.1, .round = 0.01},
    {"sampler_name", KN_INPUT_COMBO, .options = kn_sampler_names},
    {"scheduler", KN_INPUT_COMBO, .options = kn_scheduler_names},
    {"positive", KN_INPUT_LINK, .type = "CONDITIONING"},
    {"negative", KN_INPUT_LINK, .type = "CONDITIONING"},
    {"latent_image", KN_INPUT_LINK, .type = "LATENT"},
    {"start_at_step", KN_INPUT_INT, .def = 0, .min = 0, .max = 10000},
    {"end_at_step", KN_INPUT_INT, .def = 10000, .min = 0, .max = 10000},
    {"return_with_leftover_noise", KN_INPUT_COMBO, .options = k_sampler_advanced_return_with_leftover_noise},
};
static const kn_output_spec k_sampler_advanced_out[] = {{.type = "LATENT"}};

/* VAEDecode */
static const kn_input_spec vae_decode_in[] = {
    {"samples", KN_INPUT_LINK, .type = "LATENT", .tooltip = "The latent to be decoded."},
    {"vae", KN_INPUT_LINK, .type = "VAE", .tooltip = "The VAE model used for decoding the latent."},
};
static const kn_output_spec vae_decode_out[] = {{.type = "IMAGE"}};

/* VAEEncode */
static const kn_input_spec vae_encode_in[] = {
    {"pixels", KN_INPUT_LINK, .type = "IMAGE"},
    {"vae", KN_INPUT_LINK, .type = "VAE"},
};
static const kn_output_spec vae_encode_out[] = {{.type = "LATENT"}};

/* LoadImage */
static const kn_input_spec load_image_in[] = {
    {"image", KN_INPUT_COMBO, .folder = "input", .flags = KN_INPUT_IMAGE_UPLOAD | KN_INPUT_FILE_EXISTS},
};
static const kn_output_spec load_image_out[] = {{.type = "IMAGE"}, {.type = "MASK"}};

/* SaveImage */
static const kn_input_spec save_image_in[] = {
    {"images", KN_INPUT_LINK, .type = "IMAGE", .tooltip = "The images to save."},
    {"filename_prefix", KN_INPUT_STRING, .def_str = "ComfyUI", .tooltip = "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."},
};

/* PreviewImage */
static const kn_input_spec preview_image_in[] = {
    {"images", KN_INPUT_LINK, .type = "IMAGE"},
};

/* ImageScale */
static const kn_input_spec image_scale_in[] = {
    {"image", KN_INPUT_LINK, .type = "IMAGE"},
    {"upscale_method", KN_INPUT_COMBO, .options = kn_upscale_methods},
    {"width", KN_INPUT_INT, .def = 512, .min = 0, .max = 16384, .step = 1},
    {"height", KN_INPUT_INT, .def = 512, .min = 0, .max = 16384, .step = 1},
    {"crop", KN_INPUT_COMBO, .options = image_scale_crop},
};
static const kn_output_spec image_scale_out[] = {{.type = "IMAGE"}};

/* LoadLatent */
static const kn_input_spec load_latent_in[] = {
    {"latent", KN_INPUT_COMBO, .folder = "input_latents", .flags = KN_INPUT_FILE_EXISTS},
};
static const kn_output_spec load_latent_out[] = {{.type = "LATENT"}};

/* SaveLatent */
static const kn_input_spec save_latent_in[] = {
    {"samples", KN_INPUT_LINK, .type = "LATENT"},
    {"filename_prefix", KN_INPUT_STRING, .def_str = "latents/ComfyUI"},
};

/* ModelSamplingAuraFlow */
static const kn_input_spec model_sampling_aura_flow_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"shift", KN_INPUT_FLOAT, .def = 1.73, .min = 0.0, .max = 100.0, .step = 0.01},
};
static const kn_output_spec model_sampling_aura_flow_out[] = {{.type = "MODEL"}};

/* ModelSamplingFlux */
static const kn_input_spec model_sampling_flux_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"max_shift", KN_INPUT_FLOAT, .def = 1.15, .min = 0.0, .max = 100.0, .step = 0.01},
    {"base_shift", KN_INPUT_FLOAT, .def = 0.5, .min = 0.0, .max = 100.0, .step = 0.01},
    {"width", KN_INPUT_INT, .def = 1024, .min = 16, .max = 16384, .step = 8},
    {"height", KN_INPUT_INT, .def = 1024, .min = 16, .max = 16384, .step = 8},
};
static const kn_output_spec model_sampling_flux_out[] = {{.type = "MODEL"}};

/* ModelSamplingSD3 */
static const kn_input_spec model_sampling_sd3_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"shift", KN_INPUT_FLOAT, .def = 3.0, .min = 0.0, .max = 100.0, .step = 0.01},
};
static const kn_output_spec model_sampling_sd3_out[] = {{.type = "MODEL"}};

/* EmptySD3LatentImage */
static const kn_input_spec empty_sd3_latent_image_in[] = {
    {"width", KN_INPUT_INT, .def = 1024, .min = 16, .max = 16384, .step = 16},
    {"height", KN_INPUT_INT, .def = 1024, .min = 16, .max = 16384, .step = 16},
    {"batch_size", KN_INPUT_INT, .def = 1, .min = 1, .max = 4096},
};
static const kn_output_spec empty_sd3_latent_image_out[] = {{.type = "LATENT"}};

/* FluxGuidance */
static const kn_input_spec flux_guidance_in[] = {
    {"conditioning", KN_INPUT_LINK, .type = "CONDITIONING"},
    {"guidance", KN_INPUT_FLOAT, .def = 3.5, .min = -100.0, .max = 100.0, .step = 0.1},
};
static const kn_output_spec flux_guidance_out[] = {{.type = "CONDITIONING"}};

/* CLIPTextEncodeFlux */
static const kn_input_spec clip_text_encode_flux_in[] = {
    {"clip", KN_INPUT_LINK, .type = "CLIP"},
    {"clip_l", KN_INPUT_STRING, .flags = KN_INPUT_MULTILINE | KN_INPUT_DYNAMIC_PROMPTS},
    {"t5xxl", KN_INPUT_STRING, .flags = KN_INPUT_MULTILINE | KN_INPUT_DYNAMIC_PROMPTS},
    {"guidance", KN_INPUT_FLOAT, .def = 3.5, .min = 0.0, .max = 100.0, .step = 0.1},
};
static const kn_output_spec clip_text_encode_flux_out[] = {{.type = "CONDITIONING"}};

/* FluxKontextImageScale */
static const kn_input_spec flux_kontext_image_scale_in[] = {
    {"image", KN_INPUT_LINK, .type = "IMAGE"},
};
static const kn_output_spec flux_kontext_image_scale_out[] = {{.type = "IMAGE"}};

/* TextEncodeQwenImageEdit */
static const kn_input_spec text_encode_qwen_image_edit_in[] = {
    {"clip", KN_INPUT_LINK, .type = "CLIP"},
    {"prompt", KN_INPUT_STRING, .flags = KN_INPUT_MULTILINE | KN_INPUT_DYNAMIC_PROMPTS},
    {"vae", KN_INPUT_LINK, .section = KN_SECTION_OPTIONAL, .type = "VAE"},
    {"image", KN_INPUT_LINK, .section = KN_SECTION_OPTIONAL, .type = "IMAGE"},
};
static const kn_output_spec text_encode_qwen_image_edit_out[] = {{.type = "CONDITIONING"}};

/* TextEncodeQwenImageEditPlus */
static const kn_input_spec text_encode_qwen_image_edit_plus_in[] = {
    {"clip", KN_INPUT_LINK, .type = "CLIP"},
    {"prompt", KN_INPUT_STRING, .flags = KN_INPUT_MULTILINE | KN_INPUT_DYNAMIC_PROMPTS},
    {"vae", KN_INPUT_LINK, .section = KN_SECTION_OPTIONAL, .type = "VAE"},
    {"image1", KN_INPUT_LINK, .section = KN_SECTION_OPTIONAL, .type = "IMAGE"},
    {"image2", KN_INPUT_LINK, .section = KN_SECTION_OPTIONAL, .type = "IMAGE"},
    {"image3", KN_INPUT_LINK, .section = KN_SECTION_OPTIONAL, .type = "IMAGE"},
};
static const kn_output_spec text_encode_qwen_image_edit_plus_out[] = {{.type = "CONDITIONING"}};

/* CFGNorm */
static const kn_input_spec cfg_norm_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"strength", KN_INPUT_FLOAT, .def = 1.0, .min = 0.0, .max = 100.0, .step = 0.01},
};
static const kn_output_spec cfg_norm_out[] = {{.type = "MODEL", .name = "patched_model"}};

/* EasyCache, LazyCache (comfy_extras/nodes_easycache.py) */
#define STEP_CACHE_INPUTS(NAME)                                                                                     \
    {"model", KN_INPUT_LINK, .type = "MODEL", .tooltip = "The model to add " NAME " to."},                          \
    {"reuse_threshold", KN_INPUT_FLOAT, .def = 0.2, .min = 0.0, .max = 3.0, .step = 0.01,                          \
     .flags = KN_INPUT_ADVANCED, .tooltip = "The threshold for reusing cached steps."},                            \
    {"start_percent", KN_INPUT_FLOAT, .def = 0.15, .min = 0.0, .max = 1.0, .step = 0.01,                           \
     .flags = KN_INPUT_ADVANCED, .tooltip = "The relative sampling step to begin use of " NAME "."},               \
    {"end_percent", KN_INPUT_FLOAT, .def = 0.95, .min = 0.0, .max = 1.0, .step = 0.01,                             \
     .flags = KN_INPUT_ADVANCED, .tooltip = "The relative sampling step to end use of " NAME "."},                 \
    {"verbose", KN_INPUT_BOOLEAN, .def = 0, .flags = KN_INPUT_ADVANCED, .tooltip = "Whether to log verbose information."}
static const kn_input_spec easy_cache_in[] = {STEP_CACHE_INPUTS("EasyCache")};
static const kn_input_spec lazy_cache_in[] = {STEP_CACHE_INPUTS("LazyCache")};
static const kn_output_spec easy_cache_out[] = {{.type = "MODEL"}}, lazy_cache_out[] = {{.type = "MODEL"}};

/* ImageScaleToTotalPixels */
static const kn_input_spec image_scale_to_total_pixels_in[] = {
    {"image", KN_INPUT_LINK, .type = "IMAGE"},
    {"upscale_method", KN_INPUT_COMBO, .options = kn_upscale_methods},
    {"megapixels", KN_INPUT_FLOAT, .def = 1.0, .min = 0.01, .max = 16.0, .step = 0.01},
    {"resolution_steps", KN_INPUT_INT, .section = KN_SECTION_OPTIONAL, .def = 1, .min = 1, .max = 256},
};
static const kn_output_spec image_scale_to_total_pixels_out[] = {{.type = "IMAGE"}};

/* RandomNoise */
static const kn_input_spec random_noise_in[] = {
    {"noise_seed", KN_INPUT_INT, .def = 0, .min = 0, .max = KN_SEED_MAX, .flags = KN_INPUT_CONTROL_AFTER_GENERATE},
};
static const kn_output_spec random_noise_out[] = {{.type = "NOISE"}};

/* KSamplerSelect */
static const kn_input_spec k_sampler_select_in[] = {
    {"sampler_name", KN_INPUT_COMBO, .options = kn_sampler_names},
};
static const kn_output_spec k_sampler_select_out[] = {{.type = "SAMPLER"}};

/* BasicScheduler */
static const kn_input_spec basic_scheduler_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"scheduler", KN_INPUT_COMBO, .options = kn_scheduler_names},
    {"steps", KN_INPUT_INT, .def = 20, .min = 1, .max = 10000},
    {"denoise", KN_INPUT_FLOAT, .def = 1.0, .min = 0.0, .max = 1.0, .step = 0.01},
};
static const kn_output_spec basic_scheduler_out[] = {{.type = "SIGMAS"}};

/* BasicGuider */
static const kn_input_spec basic_guider_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"conditioning", KN_INPUT_LINK, .type = "CONDITIONING"},
};
static const kn_output_spec basic_guider_out[] = {{.type = "GUIDER"}};

/* CFGGuider */
static const kn_input_spec cfg_guider_in[] = {
    {"model", KN_INPUT_LINK, .type = "MODEL"},
    {"positive", KN_INPUT_LINK, .type = "CONDITIONING"},
    {"negative", KN_INPUT_LINK, .type = "CONDITIONING"},
    {"cfg", KN_INPUT_FLOAT, .def = 8.0, .min = 0.0, .max = 100.0, .step = 0.1, .round = 0.01},
};
static const kn_output_spec cfg_guider_out[] = {{.type = "GUIDER"}};

/* SamplerCustomAdvanced */
static const kn_input_spec sampler_custom_advanced_in[] = {
    {"noise", KN_INPUT_LINK, .type = "NOISE"},
    {"guider", KN_INPUT_LINK, .type = "GUIDER"},
    {"sampler", KN_INPUT_LINK, .type = "SAMPLER"},
    {"sigmas", KN_INPUT_LINK, .type = "SIGMAS"},
    {"latent_image", KN_INPUT_LINK, .type = "LATENT"},
};
static const kn_output_spec sampler_custom_advanced_out[] = {{.type = "LATENT", .name = "output"}, {.type = "LATENT", .name = "denoised_output"}};

/* ReferenceLatent */
static const kn_input_spec reference_latent_in[] = {
    {"conditioning", KN_INPUT_LINK, .type = "CONDITIONING"},
    {"latent", KN_INPUT_LINK, .section = KN_SECTION_OPTIONAL, .type = "LATENT"},
};
static const kn_output_spec reference_latent_out[] = {{.type = "CONDITIONING"}};

/* ---- the classes, in ComfyUI's registration order -------------------------- */

#define KN_INPUTS(x) .inputs = x##_in, .n_inputs = (int)(sizeof x##_in / sizeof x##_in[0])
#define KN_OUTPUTS(x) .outputs = x##_out, .n_outputs = (int)(sizeof x##_out / sizeof x##_out[0])

static const kn_node_class kn_classes[] = {
    {.name = "CheckpointLoaderSimple",
     .display_name = "Load Checkpoint",
     .category = "loaders",
     .python_module = "nodes",
     .description = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
     KN_INPUTS(checkpoint_loader_simple),
     KN_OUTPUTS(checkpoint_loader_simple),
     .output_tooltips = (const char *const[]){"The model used for denoising latents.", "The CLIP model used for encoding text prompts.", "The VAE model used for encoding and decoding images to and from latent space.", NULL},
     .search_aliases = (const char *const[]){"load model", "checkpoint", "model loader", "load checkpoint", "ckpt", "model", NULL}},
    {.name = "UNETLoader",
     .display_name = "Load Diffusion Model",
     .category = "advanced/loaders",
     .python_module = "nodes",
     KN_INPUTS(unet_loader),
     KN_OUTPUTS(unet_loader),
     .search_aliases = (const char *const[]){NULL}},
    {.name = "CLIPLoader",
     .display_name = "Load CLIP",
     .category = "advanced/loaders",
     .python_module = "nodes",
     .description = "[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\nstable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B",
     KN_INPUTS(clip_loader),
     KN_OUTPUTS(clip_loader),
     .search_aliases = (const char *const[]){NULL}},
    {.name = "DualCLIPLoader",
     .display_name = "DualCLIPLoader",
     .category = "advanced/loaders",
     .python_module = "nodes",
     .description = "[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\nhidream: at least one of t5 or llama, recommended t5 and llama\nhunyuan_image: qwen2.5vl 7b and byt5 small\nnewbie: gemma-3-4b-it, jina clip v2",
     KN_INPUTS(dual_clip_loader),
     KN_OUTPUTS(dual_clip_loader),
     .search_aliases = (const char *const[]){NULL}},
    {.name = "VAELoader",
     .display_name = "Load VAE",
     .category = "loaders",
     .python_module = "nodes",
     KN_INPUTS(vae_loader),
     KN_OUTPUTS(vae_loader),
     .search_aliases = (const char *const[]){NULL}},
    {.name = "LoraLoader",
     .display_name = "Load LoRA (Model and CLIP)",
     .category = "loaders",
     .python_module = "nodes",
     .description = "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
     KN_INPUTS(lora_loader),
     KN_OUTPUTS(lora_loader),
     .output_tooltips = (const char *const[]){"The modified diffusion model.", "The modified CLIP model.", NULL},
     .search_aliases = (const char *const[]){"lora", "load lora", "apply lora", "lora loader", "lora model", NULL}},
    {.name = "LoraLoaderModelOnly",
     .display_name = "Load LoRA",
     .category = "loaders",
     .python_module = "nodes",
     .description = "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
     KN_INPUTS(lora_loader_model_only),
     KN_OUTPUTS(lora_loader_model_only),
     .output_tooltips = (const char *const[]){"The modified diffusion model.", "The modified CLIP model.", NULL},
     .search_aliases = (const char *const[]){"lora", "load lora", "apply lora", "lora loader", "lora model", NULL}},
    {.name = "CLIPTextEncode",
     .display_name = "CLIP Text Encode (Prompt)",
     .category = "conditioning",
     .python_module = "nodes",
     .description = "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
     KN_INPUTS(clip_text_encode),
     KN_OUTPUTS(clip_text_encode),
     .output_tooltips = (const char *const[]){"A conditioning containing the embedded text used to guide the diffusion model.", NULL},
     .search_aliases = (const char *const[]){"text", "prompt", "text prompt", "positive prompt", "negative prompt", "encode text", "text encoder", "encode prompt", NULL}},
    {.name = "ConditioningCombine",
     .display_name = "Conditioning (Combine)",
     .category = "conditioning",
     .python_module = "nodes",
     KN_INPUTS(conditioning_combine),
     KN_OUTPUTS(conditioning_combine),
     .search_aliases = (const char *const[]){"combine", "merge conditioning", "combine prompts", "merge prompts", "mix prompts", "add prompt", NULL}},
    {.name = "ConditioningZeroOut",
     .display_name = "ConditioningZeroOut",
     .category = "advanced/conditioning",
     .python_module = "nodes",
     KN_INPUTS(conditioning_zero_out),
     KN_OUTPUTS(conditioning_zero_out),
     .search_aliases = (const char *const[]){"null conditioning", "clear conditioning", NULL}},
    {.name = "EmptyLatentImage",
     .display_name = "Empty Latent Image",
     .category = "latent",
     .python_module = "nodes",
     .description = "Create a new batch of empty latent images to be denoised via sampling.",
     KN_INPUTS(empty_latent_image),
     KN_OUTPUTS(empty_latent_image),
     .output_tooltips = (const char *const[]){"The empty latent image batch.", NULL},
     .search_aliases = (const char *const[]){"empty", "empty latent", "new latent", "create latent", "blank latent", "blank", NULL}},
    {.name = "KSampler",
     .display_name = "KSampler",
     .category = "sampling",
     .python_module = "nodes",
     .description = "Uses the provided model, positive and negative conditioning to denoise the latent image.",
     KN_INPUTS(k_sampler),
     KN_OUTPUTS(k_sampler),
     .output_tooltips = (const char *const[]){"The denoised latent.", NULL},
     .search_aliases = (const char *const[]){"sampler", "sample", "generate", "denoise", "diffuse", "txt2img", "img2img", NULL}},
    {.name = "KSamplerAdvanced",
     .display_name = "KSampler (Advanced)",
     .category = "sampling",
     .python_module = "nodes",
     KN_INPUTS(k_sampler_advanced),
     KN_OUTPUTS(k_sampler_advanced),
     .search_aliases = (const char *const[]){NULL}},
    {.name = "VAEDecode",
     .display_name = "VAE Decode",
     .category = "latent",
     .python_module = "nodes",
     .description = "Decodes latent images back into pixel space images.",
     KN_INPUTS(vae_decode),
     KN_OUTPUTS(vae_decode),
     .output_tooltips = (const char *const[]){"The decoded image.", NULL},
     .search_aliases = (const char *const[]){"decode", "decode latent", "latent to image", "render latent", NULL}},
    {.name = "VAEEncode",
     .display_name = "VAE Encode",
     .category = "latent",
     .python_module = "nodes",
     KN_INPUTS(vae_encode),
     KN_OUTPUTS(vae_encode),
     .search_aliases = (const char *const[]){"encode", "encode image", "image to latent", NULL}},
    {.name = "LoadImage",
     .display_name = "Load Image",
     .category = "image",
     .python_module = "nodes",
     KN_INPUTS(load_image),
     KN_OUTPUTS(load_image),
     .search_aliases = (const char *const[]){"load image", "open image", "import image", "image input", "upload image", "read image", "image loader", NULL}},
    {.name = "SaveImage",
     .display_name = "Save Image",
     .category = "image",
     .python_module = "nodes",
     .description = "Saves the input images to your ComfyUI output directory.",
     KN_INPUTS(save_image),
     .hidden = kn_hidden_prompt,
     .search_aliases = (const char *const[]){"save", "save image", "export image", "output image", "write image", "download", NULL},
     .output_node = true},
    {.name = "PreviewImage",
     .display_name = "Preview Image",
     .category = "image",
     .python_module = "nodes",
     .description = "Saves the input images to your ComfyUI output directory.",
     KN_INPUTS(preview_image),
     .hidden = kn_hidden_prompt,
     .search_aliases = (const char *const[]){"preview", "preview image", "show image", "view image", "display image", "image viewer", NULL},
     .output_node = true},
    {.name = "ImageScale",
     .display_name = "Upscale Image",
     .category = "image/upscaling",
     .python_module = "nodes",
     KN_INPUTS(image_scale),
     KN_OUTPUTS(image_scale),
     .search_aliases = (const char *const[]){"resize", "resize image", "scale image", "image resize", "zoom", "zoom in", "change size", NULL}},
    /* No display names: ComfyUI shows the class name. */
    {.name = "LoadLatent",
     .display_name = "LoadLatent",
     .category = "_for_testing",
     .python_module = "nodes",
     KN_INPUTS(load_latent),
     KN_OUTPUTS(load_latent),
     .search_aliases = (const char *const[]){"import latent", "open latent", NULL}},
    {.name = "SaveLatent",
     .display_name = "SaveLatent",
     .category = "_for_testing",
     .python_module = "nodes",
     KN_INPUTS(save_latent),
     .hidden = kn_hidden_prompt,
     .search_aliases = (const char *const[]){"export latent", NULL},
     .output_node = true},
    {.name = "ModelSamplingAuraFlow",
     .display_name = "ModelSamplingAuraFlow",
     .category = "advanced/model",
     .python_module = "comfy_extras.nodes_model_advanced",
     KN_INPUTS(model_sampling_aura_flow),
     KN_OUTPUTS(model_sampling_aura_flow),
     .search_aliases = (const char *const[]){NULL}},
    {.name = "ModelSamplingFlux",
     .display_name = "ModelSamplingFlux",
     .category = "advanced/model",
     .python_module = "comfy_extras.nodes_model_advanced",
     KN_INPUTS(model_sampling_flux),
     KN_OUTPUTS(model_sampling_flux),
     .search_aliases = (const char *const[]){NULL}},
    {.name = "ModelSamplingSD3",
     .display_name = "ModelSamplingSD3",
     .category = "advanced/model",
     .python_module = "comfy_extras.nodes_model_advanced",
     KN_INPUTS(model_sampling_sd3),
     KN_OUTPUTS(model_sampling_sd3),
     .search_aliases = (const char *const[]){NULL}},
    {.name = "EmptySD3LatentImage",
     .category = "latent/sd3",
     .python_module = "comfy_extras.nodes_sd3",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(empty_sd3_latent_image),
     KN_OUTPUTS(empty_sd3_latent_image)},
    {.name = "FluxGuidance",
     .category = "advanced/conditioning/flux",
     .python_module = "comfy_extras.nodes_flux",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(flux_guidance),
     KN_OUTPUTS(flux_guidance)},
    {.name = "CLIPTextEncodeFlux",
     .category = "advanced/conditioning/flux",
     .python_module = "comfy_extras.nodes_flux",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(clip_text_encode_flux),
     KN_OUTPUTS(clip_text_encode_flux)},
    {.name = "FluxKontextImageScale",
     .category = "advanced/conditioning/flux",
     .python_module = "comfy_extras.nodes_flux",
     .style = KN_SCHEMA_V3,
     .description = "This node resizes the image to one that is more optimal for flux kontext.",
     KN_INPUTS(flux_kontext_image_scale),
     KN_OUTPUTS(flux_kontext_image_scale)},
    {.name = "TextEncodeQwenImageEdit",
     .category = "advanced/conditioning",
     .python_module = "comfy_extras.nodes_qwen",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(text_encode_qwen_image_edit),
     KN_OUTPUTS(text_encode_qwen_image_edit)},
    {.name = "TextEncodeQwenImageEditPlus",
     .category = "advanced/conditioning",
     .python_module = "comfy_extras.nodes_qwen",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(text_encode_qwen_image_edit_plus),
     KN_OUTPUTS(text_encode_qwen_image_edit_plus)},
    {.name = "CFGNorm",
     .category = "advanced/guidance",
     .python_module = "comfy_extras.nodes_cfg",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(cfg_norm),
     KN_OUTPUTS(cfg_norm),
     .experimental = true},
    {.name = "EasyCache",
     .display_name = "EasyCache",
     .category = "advanced/debug",
     .description = "Native EasyCache implementation.",
     .python_module = "comfy_extras.nodes_easycache",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(easy_cache),
     KN_OUTPUTS(easy_cache),
     .output_tooltips = (const char *const[]){"The model with EasyCache.", NULL},
     .experimental = true},
    {.name = "LazyCache",
     .display_name = "LazyCache",
     .category = "advanced/debug",
     .description = "A homebrew version of EasyCache - even 'easier' version of EasyCache to implement. Overall works "
                    "worse than EasyCache, but better in some rare cases AND universal compatibility with everything in "
                    "ComfyUI.",
     .python_module = "comfy_extras.nodes_easycache",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(lazy_cache),
     KN_OUTPUTS(lazy_cache),
     .output_tooltips = (const char *const[]){"The model with LazyCache.", NULL},
     .experimental = true},
    {.name = "ImageScaleToTotalPixels",
     .category = "image/upscaling",
     .python_module = "comfy_extras.nodes_post_processing",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(image_scale_to_total_pixels),
     KN_OUTPUTS(image_scale_to_total_pixels)},
    {.name = "RandomNoise",
     .category = "sampling/custom_sampling/noise",
     .python_module = "comfy_extras.nodes_custom_sampler",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(random_noise),
     KN_OUTPUTS(random_noise)},
    {.name = "KSamplerSelect",
     .category = "sampling/custom_sampling/samplers",
     .python_module = "comfy_extras.nodes_custom_sampler",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(k_sampler_select),
     KN_OUTPUTS(k_sampler_select)},
    {.name = "BasicScheduler",
     .category = "sampling/custom_sampling/schedulers",
     .python_module = "comfy_extras.nodes_custom_sampler",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(basic_scheduler),
     KN_OUTPUTS(basic_scheduler)},
    {.name = "BasicGuider",
     .category = "sampling/custom_sampling/guiders",
     .python_module = "comfy_extras.nodes_custom_sampler",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(basic_guider),
     KN_OUTPUTS(basic_guider)},
    {.name = "CFGGuider",
     .category = "sampling/custom_sampling/guiders",
     .python_module = "comfy_extras.nodes_custom_sampler",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(cfg_guider),
     KN_OUTPUTS(cfg_guider)},
    {.name = "SamplerCustomAdvanced",
     .category = "sampling/custom_sampling",
     .python_module = "comfy_extras.nodes_custom_sampler",
     .style = KN_SCHEMA_V3,
     KN_INPUTS(sampler_custom_advanced),
     KN_OUTPUTS(sampler_custom_advanced)},
    {.name = "ReferenceLatent",
     .category = "advanced/conditioning/edit_models",
     .python_module = "comfy_extras.nodes_edit_model",
     .style = KN_SCHEMA_V3,
     .description = "This node sets the guiding latent for an edit model. If the model supports it you can chain multiple to set multiple reference images.",
     KN_INPUTS(reference_latent),
     KN_OUTPUTS(reference_latent)},
};

/* ---- lookups --------------------------------------------------------------- */

int kn_registry_count(void) { return (int)(sizeof kn_classes / sizeof kn_classes[0]); }

const kn_node_class *kn_registry_at(int i) {
    return i >= 0 && i < kn_registry_count() ? &kn_classes[i] : NULL;
}

const kn_node_class *kn_registry_find(const char *class_type) {
    if (!class_type) return NULL;
    for (int i = 0; i < kn_registry_count(); i++)
        if (strcmp(kn_classes[i].name, class_type) == 0) return &kn_classes[i];
    return NULL;
}

const kn_input_spec *kn_node_input(const kn_node_class *cls, const char *name) {
    for (int i = 0; i < cls->n_inputs; i++)
        if (strcmp(cls->inputs[i].name, name) == 0) return &cls->inputs[i];
    return NULL;
}

const char *kn_node_title(const kn_node_class *cls) {
    return cls->display_name ? cls->display_name : cls->name;
}

const char *kn_output_name(const kn_output_spec *out) { return out->name ? out->name : out->type; }

bool kn_input_max_exceeded(const kn_input_spec *in, double v) {
    /* KN_SEED_MAX stands for 2^64 - 1: any value that reaches 2^64 is past it. */
    return in->max >= KN_SEED_MAX ? v >= KN_SEED_MAX : v > in->max;
}

void kn_input_format_bound(const kn_input_spec *in, double bound, char *buf, size_t len) {
    if (in->kind == KN_INPUT_FLOAT) kn_py_float(bound, buf, len);
    else if (bound >= KN_SEED_MAX) snprintf(buf, len, "18446744073709551615");
    else snprintf(buf, len, "%.0f", bound); /* INT bounds are whole numbers */
}
