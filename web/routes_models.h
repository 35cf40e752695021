/* Model-folder routes beyond /models: GET /view_metadata/{folder}?filename=
 * (a safetensors file's __metadata__ object, ComfyUI's server.py) and
 * GET /experiment/models, /experiment/models/{folder} (app/model_manager.py).
 *
 * Contract:
 *  - {folder} must be one of the model folders Kiln reads (checkpoints,
 *    diffusion_models, loras, text_encoders, vae); filename one of the files
 *    that folder enumerates (kn_models_resolve): nothing else is opened.
 *  - /view_metadata answers the __metadata__ object, 404 JSON when the file
 *    has none or is not there; /experiment/models lists
 *    [{"name": folder, "folders": [path]}], /experiment/models/{folder}
 *    [{"name", "pathIndex", "modified", "created", "size"}]. */
#ifndef KN_WEB_ROUTES_MODELS_H
#define KN_WEB_ROUTES_MODELS_H

#include "nodes/model_store.h"
#include "web/http.h"

extern const char *const kn_model_folders[5];

int kn_route_view_metadata(const kn_http *h, kn_models *models);
int kn_route_experiment_models(const kn_http *h, kn_models *models);

#endif
