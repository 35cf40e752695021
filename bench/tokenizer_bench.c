/* tokenizer_bench: how long the Qwen2 BPE tokenizer takes to load and to
 * encode a long prompt (the timings test_tokenizer used to assert).
 *
 *   tokenizer_bench [TOKENIZER_DIR]
 *
 * TOKENIZER_DIR defaults to the Qwen2.5 data Kiln ships
 * (pipelines/tokenizers/data/qwen25). Prints, as medians of KN_BENCH_REPS
 * (default 5) runs, the CPU and wall time of kn_bpe_load, and of one
 * kn_bpe_encode of a ~300-token prompt (each run encodes it 200 times).
 * CPU time is the figure to read on a shared machine: wall time also counts
 * the other tenants. Targets: load < 300 ms, encode < 1 ms. */
#include <stdio.h>
#include <stdlib.h>

#include "bench/timer.h"
#include "pipelines/tokenizers/bpe.h"

#define ENCODES 200

static const char prompt[] =
    "A breathtaking panoramic view of an ancient castle perched on a misty cliff at dawn, golden sunlight "
    "streaming through the clouds, casting long shadows over the rolling green hills below. In the foreground, "
    "a winding cobblestone path lined with wildflowers in shades of violet, crimson and ivory leads toward the "
    "towering gates, where two stone lions stand guard. Flocks of birds circle the highest turret; banners "
    "bearing an emblem of a silver dragon flutter in the crisp morning breeze. The sky is painted with soft "
    "gradients of peach, lavender and pale blue, while a distant waterfall cascades into a shimmering lake that "
    "reflects the entire scene like a mirror. Ultra detailed, 8k resolution, cinematic lighting, volumetric fog, "
    "sharp focus, masterpiece, trending on artstation, by a renowned fantasy illustrator, with intricate "
    "architectural details on every window, balcony and buttress of the castle walls, ivy creeping up the old "
    "stones, a lone knight on horseback approaching from the east, his armor gleaming, his red cape flowing "
    "behind him as the village below slowly wakes, smoke rising from chimneys, merchants opening their stalls. "
    "Children chase a scruffy dog across the market square, an old woman feeds pigeons by the fountain, and "
    "somewhere a bell tolls seven times (soft focus:1.2), [bokeh], 35mm film grain, f/1.8, ISO 200.";

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : KN_SOURCE_DIR "/pipelines/tokenizers/data/qwen25";
    const char *env = getenv("KN_BENCH_REPS");
    int reps = env && atoi(env) > 0 ? atoi(env) : 5;
    double *load_cpu = calloc((size_t)reps, sizeof(double)), *load_wall = calloc((size_t)reps, sizeof(double));
    double *enc_cpu = calloc((size_t)reps, sizeof(double)), *enc_wall = calloc((size_t)reps, sizeof(double));
    if (!load_cpu || !load_wall || !enc_cpu || !enc_wall) {
        fprintf(stderr, "tokenizer_bench: out of memory\n");
        return 1;
    }
    size_t tokens = 0;
    int rc = 0;
    for (int r = 0; r < reps && !rc; r++) {
        kn_bpe *bpe = NULL;
        kn_err err;
        double c0 = bench_cpu_seconds(), w0 = bench_now();
        if (kn_bpe_load(&bpe, dir, &err)) {
            fprintf(stderr, "tokenizer_bench: %s\n", err.msg);
            rc = 1;
            break;
        }
        load_cpu[r] = bench_cpu_seconds() - c0;
        load_wall[r] = bench_now() - w0;
        c0 = bench_cpu_seconds();
        w0 = bench_now();
        for (int i = 0; i < ENCODES && !rc; i++) {
            int32_t *ids = NULL;
            if (kn_bpe_encode(bpe, prompt, sizeof prompt - 1, &ids, &tokens, &err)) {
                fprintf(stderr, "tokenizer_bench: %s\n", err.msg);
                rc = 1;
            }
            free(ids);
        }
        enc_cpu[r] = (bench_cpu_seconds() - c0) / ENCODES;
        enc_wall[r] = (bench_now() - w0) / ENCODES;
        kn_bpe_free(bpe);
    }
    if (!rc) {
        printf("qwen2 bpe (%s), median of %d runs:\n", dir, reps);
        printf("  load:                 %8.1f ms CPU  %8.1f ms wall   (target < 300 ms)\n",
               1e3 * bench_median(load_cpu, reps), 1e3 * bench_median(load_wall, reps));
        printf("  encode %3zu tokens:    %8.3f ms CPU  %8.3f ms wall   (target < 1 ms)\n", tokens,
               1e3 * bench_median(enc_cpu, reps), 1e3 * bench_median(enc_wall, reps));
    }
    free(load_cpu);
    free(load_wall);
    free(enc_cpu);
    free(enc_wall);
    return rc;
}
