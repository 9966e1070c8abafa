/*
 * llcuda's log filter for libllama and ggml, built by recipe/build-binaries.sh into lib/libllcuda-log.so.
 *
 * llcuda's in-process engine collects libllama's log lines through a Python callback into a ring buffer
 * (the tail of which goes into error messages). ggml's CUDA backend logs a debug line on most decode steps
 * ("CUDA Graph id N reused"): each took the GIL back in the middle of llama_decode, and after a few
 * thousand steps the buffer held nothing else. On an H100 (llama.cpp b11434, Gemma-3-270M shape, two
 * interleaved runs of each sink) the throughput difference was within run-to-run noise (16 sequences:
 * 4,313-4,671 tok/s with this filter, 4,022-4,372 through Python; 64: 7,780-8,157 vs 7,822-8,103).
 * llama_log_set(llcuda_log_filter, NULL) drops lines below a level here, in C, and forwards the rest
 * (with their GGML_LOG_LEVEL_CONT continuations) to the callback set by llcuda_log_configure.
 */
#include <stddef.h>

typedef void (*llcuda_log_fn)(int level, const char * text, void * user_data);

enum { LEVEL_NONE = 0, LEVEL_DEBUG = 1, LEVEL_INFO = 2, LEVEL_CONT = 5 };

static llcuda_log_fn g_forward = NULL;
static int g_min_level = LEVEL_INFO;
static _Thread_local int g_last_level = LEVEL_NONE;  /* the level a CONT line continues, per thread */

/* Forward lines of at least min_level (and unlevelled ones, GGML_LOG_LEVEL_NONE) to forward. */
void llcuda_log_configure(llcuda_log_fn forward, int min_level) {
    g_forward = forward;
    g_min_level = min_level;
}

void llcuda_log_filter(int level, const char * text, void * user_data) {
    if (level != LEVEL_CONT) {
        g_last_level = level;
    }
    if (g_forward == NULL || (g_last_level != LEVEL_NONE && g_last_level < g_min_level)) {
        return;
    }
    g_forward(level, text, user_data);
}
