/* Pre-included into every C++ file of llama.cpp when pip builds llama-cpp-python (see requirements.txt).

   GCC 12's _tile_loadconfig() tells the compiler it reads 8 bytes, but ldtilecfg reads the whole 64-byte tile
   configuration. So GCC drops the stores that fill in the tiles' rows and columns, and ggml's AMX matmul then loads
   stack garbage as its tile configuration: a general protection fault on the first prompt on any Xeon with AMX
   (llama.cpp issue 20824). This redefines the macro with the real operand size and a memory clobber. It only
   applies when the build targets AMX (GGML_NATIVE on a CPU with AMX); elsewhere it does nothing. */
#if defined(__cplusplus) && defined(__x86_64__) && defined(__AMX_TILE__)
#include <immintrin.h>
#undef _tile_loadconfig
#define _tile_loadconfig(config) \
    __asm__ volatile("ldtilecfg\t%X0" ::"m"(*(const unsigned char(*)[64])(config)) : "memory")
#endif
