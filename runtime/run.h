/* kiln run: execute ComfyUI workflow files (either format) headlessly.
 *
 *   kiln run [--models DIR] [--output DIR] [--input DIR] [--temp DIR]
 *            [--set NODE.INPUT=VALUE]... [--seed N] [--precision fp32|bf16|fp16]
 *            [--json] [--timings] FILE...
 *
 * Each file is converted (UI format), edited (--set: VALUE parsed as JSON,
 * else taken as a string; --seed: every constant seed/noise_seed input),
 * validated as ComfyUI's POST /prompt would and executed. All files share one
 * executor, so loaded models and cached node outputs carry over. The models
 * root is --models, else $KILN_MODELS, else the build's tiny model set.
 * --precision sets the GEMM input precision (like sglang's --dit-precision);
 * weights always stay in their stored dtype.
 * --json prints one JSON event per line on stdout (ComfyUI's websocket
 * message shapes: execution_start, execution_cached, executing, progress,
 * executed (+ "paths"), execution_success); otherwise a progress bar goes to
 * stderr and saved file paths to stdout. --timings adds, after each file,
 * the wall seconds of each executed node and of each sampler step: a
 * "timings" event {prompt_id, seconds, nodes: [{node, class_type, seconds,
 * steps: [...]}]} with --json, else a table on stderr. A failing file
 * prints ComfyUI's error JSON (the 400 body, or the execution_error message)
 * on stdout; the exit status is 1 when any file failed, 2 on usage errors. */
#ifndef KN_RUNTIME_RUN_H
#define KN_RUNTIME_RUN_H

/* argv holds the arguments after "run"; returns the process exit status. */
int kn_cmd_run(int argc, char **argv);

#endif
