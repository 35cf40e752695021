/* kiln: the command-line entry point. Subcommands:
 *   kiln fixture DIR...   run model fixtures (shared format) and report rel L2 errors
 *   kiln convert FILE     print the API-format prompt ComfyUI's front end would send
 *   kiln run FILE...      render workflows headlessly
 *   kiln serve            ComfyUI's HTTP/WebSocket API and the browser UI */
#include <stdio.h>
#include <string.h>

#include "kernels/device.h"
#include "runtime/convert.h"
#include "runtime/fixture.h"
#include "runtime/run.h"
#include "runtime/serve.h"

static int usage(FILE *out) {
    fprintf(out,
            "usage: kiln <command> [args]\n"
            "  fixture [--sp MODE] DIR...\n"
            "                   run every case of fixture folders; exit 1 on any miss (under mpirun:\n"
            "                   DiT forwards also sharded across the ranks and checked against one)\n"
            "  convert [--no-validate] [--compact] FILE|-\n"
            "                   print the API-format prompt for a workflow file (either format),\n"
            "                   or ComfyUI's error JSON and exit 1\n"
            "  run [--models DIR] [--output DIR] [--set NODE.INPUT=VALUE]... [--seed N]\n"
            "      [--precision fp32|bf16|fp16] [--json] FILE...\n"
            "                   render workflow files headlessly (see runtime/run.h)\n"
            "  serve [--listen [ADDR]] [--port N] [--models DIR] [--output-directory DIR] ...\n"
            "                   ComfyUI-compatible HTTP/WebSocket server and browser UI (runtime/serve.h)\n"
            "  version          print build information (also kiln --version)\n"
            "kiln <command> --help describes each command's options\n"
            "under `mpirun -np N`, run and serve split every DiT forward across the N ranks\n"
            "(--sp auto|ulysses|ring, --sp-ulysses U, --sp-timeout S; README: mpirun)\n");
    return out == stderr ? 2 : 0;
}

static int cmd_version(void) {
    char why[256];
    int cuda = kn_cuda_available(why, sizeof why);
    printf("kiln 0.1\nCPU threads: %d\nCUDA: %s\n", kn_cpu_threads(), cuda ? "available" : why);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (strcmp(cmd, "fixture") == 0) return kn_cmd_fixture(argc - 2, argv + 2);
    if (strcmp(cmd, "convert") == 0) return kn_cmd_convert(argc - 2, argv + 2);
    if (strcmp(cmd, "run") == 0) return kn_cmd_run(argc - 2, argv + 2);
    if (strcmp(cmd, "serve") == 0) return kn_cmd_serve(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) return cmd_version();
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) return usage(stdout);
    fprintf(stderr, "kiln: unknown command '%s' (kiln --help lists the commands)\n", cmd);
    return 2;
}
