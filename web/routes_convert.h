/* POST /kiln/convert (Kiln's own route, used by the editor's "Export (API)"):
 * the body is a UI-format workflow; the reply is the API prompt ComfyUI's
 * front end would send for it (graph/workflow.h, the conversion /prompt and
 * `kiln convert` use), or 400 with ComfyUI's error body. An API prompt is
 * echoed as it is. */
#ifndef KN_WEB_ROUTES_CONVERT_H
#define KN_WEB_ROUTES_CONVERT_H

#include "nodes/model_store.h"
#include "web/http.h"

int kn_route_convert(const kn_http *h, kn_models *models);

#endif
