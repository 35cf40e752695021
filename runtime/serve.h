/* kiln serve: run the ComfyUI-compatible server (web/server.h) until SIGINT
 * or SIGTERM.
 *
 *   kiln serve [--listen [ADDR[,ADDR]]] [--port N] [--models DIR]
 *              [--output-directory DIR] [--input-directory DIR]
 *              [--temp-directory DIR] [--extra-model-paths-config FILE]
 *              [--max-upload-size MB] [--front-end-root DIR]
 *
 * Flags are ComfyUI's where they apply: --listen alone means 0.0.0.0,
 * default 127.0.0.1:8188; folders default to output/, input/ and temp/ of
 * the working directory. The models root is --models, else the one
 * extra_model_paths.yaml names (see extra_paths_root), else $KILN_MODELS,
 * else the build's tiny model set. */
#ifndef KN_RUNTIME_SERVE_H
#define KN_RUNTIME_SERVE_H

/* argv holds the arguments after "serve"; returns the process exit status
 * (0 after a clean stop, 1 when the server could not start, 2 on usage errors). */
int kn_cmd_serve(int argc, char **argv);

#endif
