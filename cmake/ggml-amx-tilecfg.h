/*
 * Force-included into every llama.cpp translation unit by ggml-amx-tilecfg.cmake, only when
 * the compiler's <amxtileintrin.h> has the bug below.
 *
 * GCC 12's _tile_loadconfig is `asm volatile ("ldtilecfg %X0" :: "m" (*((const void **)
 * __config)))`: the asm tells the compiler it reads 8 bytes, while ldtilecfg reads 64. ggml
 * fills a local tile_config_t (palette at byte 0, colsb at 16..47, rows at 48..63) and passes
 * it to _tile_loadconfig; at -O2 and above GCC removes the colsb and rows stores as dead, so
 * every tile is configured with 0 rows and the first tileloadd raises #UD: SIGILL on every
 * AMX CPU (docs/BUILD.md). The same for _tile_storeconfig, which writes 64 bytes.
 *
 * The macros below give the asm a 64-byte operand. They are defined after <immintrin.h>, so
 * the header's own declarations are untouched and ggml's calls use the macros.
 */
#if defined(__x86_64__) && defined(__AMX_TILE__)
#include <immintrin.h>
typedef struct { unsigned char bytes[64]; } state_pack_tilecfg_t;
#define _tile_loadconfig(config) \
    __asm__ volatile("ldtilecfg\t%X0" ::"m"(*(const state_pack_tilecfg_t *)(config)))
#define _tile_storeconfig(config) \
    __asm__ volatile("sttilecfg\t%X0" : "=m"(*(state_pack_tilecfg_t *)(config)))
#endif
