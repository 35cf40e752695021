/* GET /api/jobs and /api/jobs/{id}: ComfyUI's job list (notes/comfyui-api.md
 * §3.3), built from the queue's /queue and /history views, so it needs no
 * state of its own.
 *
 * Contract: ?status= (comma-separated pending, in_progress, completed,
 * failed, cancelled), workflow_id=, sort_by=created_at|execution_duration,
 * sort_order=asc|desc (default desc), limit= (positive), offset= (>= 0);
 * a bad value is 400 {"error": "..."}. A job: id, status, priority,
 * create_time, execution_start_time, execution_end_time, execution_error,
 * outputs_count, preview_output, workflow_id, absent keys pruned; by id it
 * adds outputs, execution_status and workflow {prompt, extra_data}, 404
 * {"error": "Job not found"} when unknown. */
#ifndef KN_WEB_ROUTES_JOBS_H
#define KN_WEB_ROUTES_JOBS_H

#include "web/http.h"
#include "web/queue.h"

int kn_route_jobs(const kn_http *h, kn_queue *q);

#endif
