/* /api/jobs: see web/routes_jobs.h. */
#include "web/routes_jobs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const statuses[] = {"pending", "in_progress", "completed", "failed", "cancelled"};

/* The timestamp of the first history message of `type`, or NULL. */
static json_t *message_data(const json_t *entry, const char *type) {
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(json_object_get(entry, "status"), "messages"), i, m) {
        if (json_is_string(json_array_get(m, 0)) && strcmp(json_string_value(json_array_get(m, 0)), type) == 0)
            return json_array_get(m, 1);
    }
    return NULL;
}

/* tuple: [number, prompt_id, prompt, extra_data, outputs]; entry: the history entry or NULL. */
static json_t *job_of(const json_t *tuple, const char *status, const json_t *entry, bool full) {
    const json_t *extra = json_array_get(tuple, 3);
    json_t *job = json_pack("{s:O, s:s, s:O}", "id", json_array_get(tuple, 1), "status", status, "priority",
                            json_array_get(tuple, 0));
    if (!job) return NULL;
    json_t *v;
    if ((v = json_object_get(extra, "create_time"))) json_object_set(job, "create_time", v);
    const json_t *wid = json_object_get(json_object_get(json_object_get(extra, "extra_pnginfo"), "workflow"), "id");
    if (json_is_string(wid)) json_object_set(job, "workflow_id", (json_t *)wid);
    if (entry) {
        json_t *start = json_object_get(message_data(entry, "execution_start"), "timestamp");
        json_t *end = NULL;
        const char *ends[] = {"execution_success", "execution_error", "execution_interrupted"};
        for (int i = 0; i < 3 && !end; i++) end = json_object_get(message_data(entry, ends[i]), "timestamp");
        if (start) json_object_set(job, "execution_start_time", start);
        if (end) json_object_set(job, "execution_end_time", end);
        if ((v = message_data(entry, "execution_error"))) json_object_set(job, "execution_error", v);
        const json_t *outputs = json_object_get(entry, "outputs");
        size_t count = 0;
        json_t *preview = NULL;
        const char *node;
        json_t *out;
        json_object_foreach((json_t *)outputs, node, out) {
            size_t i;
            json_t *img;
            json_array_foreach(json_object_get(out, "images"), i, img) {
                count++;
                if (!preview && json_is_object(img)) {
                    preview = json_deep_copy(img);
                    json_object_set_new(preview, "nodeId", json_string(node));
                    json_object_set_new(preview, "mediaType", json_string("images"));
                }
            }
        }
        json_object_set_new(job, "outputs_count", json_integer((json_int_t)count));
        if (preview) json_object_set_new(job, "preview_output", preview);
        if (full) {
            json_object_set(job, "outputs", (json_t *)outputs);
            json_object_set(job, "execution_status", json_object_get(entry, "status"));
        }
    }
    if (full)
        json_object_set_new(job, "workflow", json_pack("{s:O, s:O}", "prompt", json_array_get(tuple, 2), "extra_data", extra));
    return job;
}

static const char *history_status(const json_t *entry) {
    const char *s = json_string_value(json_object_get(json_object_get(entry, "status"), "status_str"));
    if (s && strcmp(s, "success") == 0) return "completed";
    return message_data(entry, "execution_interrupted") ? "cancelled" : "failed";
}

/* Every job, newest queue state first: running, pending, then history. */
static json_t *all_jobs(kn_queue *q, bool full) {
    json_t *state = kn_queue_state(q), *history = kn_queue_history(q, NULL, -1, -1), *jobs = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(state, "queue_running"), i, t) json_array_append_new(jobs, job_of(t, "in_progress", NULL, full));
    json_array_foreach(json_object_get(state, "queue_pending"), i, t) json_array_append_new(jobs, job_of(t, "pending", NULL, full));
    const char *id;
    json_t *e;
    json_object_foreach(history, id, e) json_array_append_new(jobs, job_of(json_object_get(e, "prompt"), history_status(e), e, full));
    json_decref(state);
    json_decref(history);
    return jobs;
}

static double sort_key(const json_t *job, bool duration) {
    if (!duration) return json_number_value(json_object_get(job, "create_time"));
    const json_t *s = json_object_get(job, "execution_start_time"), *e = json_object_get(job, "execution_end_time");
    return s && e ? json_number_value(e) - json_number_value(s) : 0;
}

/* arg: {by duration, ascending} */
static int cmp_jobs(const void *a, const void *b, void *arg) {
    const bool *how = arg;
    double x = sort_key(*(json_t *const *)a, how[0]), y = sort_key(*(json_t *const *)b, how[0]);
    int c = x < y ? -1 : x > y;
    return how[1] ? c : -c;
}

static bool parse_count(const kn_http *h, const char *name, long min, long *out) {
    char v[32];
    int found = kn_http_query(h, name, v, sizeof v);
    if (found <= 0) return found == 0;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < min) return false;
    *out = n;
    return true;
}

int kn_route_jobs(const kn_http *h, kn_queue *q) {
    if (h->param) {
        json_t *jobs = all_jobs(q, true), *found = NULL;
        size_t i;
        json_t *j;
        json_array_foreach(jobs, i, j) {
            if (!found && strcmp(json_string_value(json_object_get(j, "id")), h->param) == 0) found = json_incref(j);
        }
        json_decref(jobs);
        return found ? kn_http_json(h, 200, found) : kn_http_error(h, 404, "Job not found");
    }
    char status[256], sort_by[64], order[16], wid[256];
    long limit = -1, offset = 0;
    if (kn_http_query(h, "status", status, sizeof status) < 0) return kn_http_error(h, 400, "status is too long");
    if (kn_http_query(h, "sort_by", sort_by, sizeof sort_by) < 0 ||
        (sort_by[0] && strcmp(sort_by, "created_at") && strcmp(sort_by, "execution_duration")))
        return kn_http_error(h, 400, "sort_by must be 'created_at' or 'execution_duration'");
    if (kn_http_query(h, "sort_order", order, sizeof order) < 0 || (order[0] && strcmp(order, "asc") && strcmp(order, "desc")))
        return kn_http_error(h, 400, "sort_order must be 'asc' or 'desc'");
    if (!parse_count(h, "limit", 1, &limit)) return kn_http_error(h, 400, "limit must be a positive integer");
    if (!parse_count(h, "offset", 0, &offset)) return kn_http_error(h, 400, "offset must be non-negative");
    if (kn_http_query(h, "workflow_id", wid, sizeof wid) < 0) return kn_http_error(h, 400, "workflow_id is too long");
    for (char *p = status; *p;) { /* every listed status must be one ComfyUI knows */
        size_t n = strcspn(p, ","), k = 0;
        while (k < 5 && !(strlen(statuses[k]) == n && strncmp(p, statuses[k], n) == 0)) k++;
        if (k == 5) return kn_http_error(h, 400, "unknown status '%.*s'", (int)n, p);
        p += n + (p[n] == ',');
    }
    json_t *jobs = all_jobs(q, false), *kept = json_array();
    size_t i;
    json_t *j;
    json_array_foreach(jobs, i, j) {
        const char *st = json_string_value(json_object_get(j, "status"));
        bool ok = !status[0];
        for (char *p = status; *p && !ok;) {
            size_t n = strcspn(p, ",");
            ok = strlen(st) == n && strncmp(p, st, n) == 0;
            p += n + (p[n] == ',');
        }
        if (ok && wid[0]) ok = json_is_string(json_object_get(j, "workflow_id")) &&
                              strcmp(json_string_value(json_object_get(j, "workflow_id")), wid) == 0;
        if (ok) json_array_append(kept, j);
    }
    json_decref(jobs);
    size_t n = json_array_size(kept);
    json_t **v = calloc(n ? n : 1, sizeof *v);
    for (i = 0; v && i < n; i++) v[i] = json_array_get(kept, i);
    bool how[2] = {strcmp(sort_by, "execution_duration") == 0, strcmp(order, "asc") == 0};
    if (v) qsort_r(v, n, sizeof *v, cmp_jobs, how);
    json_t *page = json_array();
    for (i = (size_t)offset; v && i < n && (limit < 0 || (long)json_array_size(page) < limit); i++)
        json_array_append(page, v[i]);
    free(v);
    json_decref(kept);
    bool more = (size_t)offset + json_array_size(page) < n;
    return kn_http_json(h, 200, json_pack("{s:o, s:{s:I, s:o, s:I, s:b}}", "jobs", page, "pagination", "offset",
                                          (json_int_t)offset, "limit", limit < 0 ? json_null() : json_integer(limit),
                                          "total", (json_int_t)n, "has_more", more));
}
