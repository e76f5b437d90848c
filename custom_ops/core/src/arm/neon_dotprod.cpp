// The "dotprod" table: neon.cpp rebuilt with vdotq_s32 (CMake compiles this file with -march=armv8.2-a+dotprod).
#define BONSAI_NEON_DOTPROD 1
#include "neon.cpp"
