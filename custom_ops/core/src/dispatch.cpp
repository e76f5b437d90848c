// The only dispatch point: picks one KernelTable from the CPU's features, once, or the one BONSAI_FORCE_ISA /
// bonsai_set_isa() names. Compiled without ISA flags, so it runs on any CPU of the architecture.
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <string>

#include "kernel_table.h"
#include "status.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // Linux uapi value; older libc headers lack the name
#endif
#endif

namespace bonsai {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
struct X86Features {
  bool avx2_fma = false;     // AVX2 + FMA + F16C (the fp16 block scales), with the OS saving the ymm state
  bool avx512_vnni = false;  // F + BW + VL + VNNI + GFNI, with the OS saving the zmm/opmask state
};

X86Features detect_x86() {
  X86Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & bit_FMA, osxsave = c & bit_OSXSAVE, f16c = c & bit_F16C;
  if (!osxsave || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool os_ymm = (xcr0_lo & 0x6) == 0x6;     // SSE + AVX state
  const bool os_zmm = (xcr0_lo & 0xe6) == 0xe6;   // + opmask, zmm_hi256, hi16_zmm
  f.avx2_fma = os_ymm && fma && f16c && (b & bit_AVX2);
  const bool avx512 = (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512VL) && (c & bit_AVX512VNNI) &&
                      (c & bit_GFNI);
  f.avx512_vnni = f.avx2_fma && os_zmm && avx512;
  return f;
}
#endif

// The one ISA registry, best first: its name, whether this CPU (and this build) can run it, and its table.
// Every name is listed on every architecture, so a name of another architecture is "not supported", not unknown.
struct Isa {
  const char* name;
  bool (*supported)();
  const KernelTable* (*table)();
};

#if defined(__x86_64__) || defined(_M_X64)
const X86Features& x86() {
  static const X86Features f = detect_x86();
  return f;
}
// Built only on a CPU that can run it: avx512.cpp is compiled with AVX-512 flags, so even copying the table
// there may use zmm moves.
const KernelTable* avx512() {
  static const KernelTable table = avx512_table();
  return &table;
}
constexpr Isa kIsas[] = {
    {"avx512", [] { return x86().avx512_vnni; }, avx512},
    {"avx2", [] { return x86().avx2_fma; }, [] { return &kAvx2Table; }},
    {"dotprod", [] { return false; }, nullptr},
    {"neon", [] { return false; }, nullptr},
    {"ref", [] { return true; }, [] { return &kRefTable; }},
};
#elif defined(__aarch64__)
bool has_dotprod() {
#if defined(__linux__)
  static const bool dotprod = getauxval(AT_HWCAP) & HWCAP_ASIMDDP;
#else
  static const bool dotprod = false;  // no portable probe: stay on the baseline NEON table
#endif
  return dotprod;
}
constexpr Isa kIsas[] = {
    {"avx512", [] { return false; }, nullptr},
    {"avx2", [] { return false; }, nullptr},
    {"dotprod", has_dotprod, [] { return &kDotprodTable; }},
    {"neon", [] { return true; }, [] { return &kNeonTable; }},  // NEON is part of the aarch64 baseline
    {"ref", [] { return true; }, [] { return &kRefTable; }},
};
#else
constexpr Isa kIsas[] = {
    {"avx512", [] { return false; }, nullptr}, {"avx2", [] { return false; }, nullptr},
    {"dotprod", [] { return false; }, nullptr}, {"neon", [] { return false; }, nullptr},
    {"ref", [] { return true; }, [] { return &kRefTable; }},
};
#endif

// The table called `name` if this CPU can run it, else null. "auto" = the first supported one.
const KernelTable* lookup(const std::string& name) {
  for (const Isa& isa : kIsas)
    if ((name == "auto" || name == isa.name) && isa.supported()) return isa.table();
  return nullptr;
}

bool known_name(const std::string& name) {
  if (name == "auto") return true;
  for (const Isa& isa : kIsas)
    if (name == isa.name) return true;
  return false;
}

// "auto, avx512, avx2, dotprod, neon or ref"
std::string expected_names() {
  std::string s = "auto";
  for (size_t i = 0; i < sizeof kIsas / sizeof kIsas[0]; ++i)
    s += std::string(i + 1 == sizeof kIsas / sizeof kIsas[0] ? " or " : ", ") + kIsas[i].name;
  return s;
}

// Null while a forced ISA is unusable: kernels then fail loudly instead of running another path.
std::atomic<const KernelTable*> g_table{nullptr};
std::string g_table_error;  // why g_table is null; written only under the initialisation below

void select(const char* name) {
  const KernelTable* t = lookup(name);
  if (!t) {
    g_table_error = std::string("ISA '") + name + "' is " + (known_name(name) ? "not supported by this CPU" : "unknown") +
                    " (expected " + expected_names() + ")";
  }
  g_table.store(t, std::memory_order_release);
}

void init_once() {
  static const bool done = [] {
    const char* forced = getenv("BONSAI_FORCE_ISA");
    select(forced && *forced ? forced : "auto");
    return true;
  }();
  (void)done;
}

}  // namespace

const KernelTable* active_table() {
  init_once();
  const KernelTable* t = g_table.load(std::memory_order_acquire);
  if (!t) set_error("BONSAI_FORCE_ISA: " + g_table_error);
  return t;
}

}  // namespace bonsai

extern "C" {

const char* bonsai_isa_name(void) {
  const bonsai::KernelTable* t = bonsai::active_table();
  return t ? t->name : "unavailable";
}

const char* bonsai_isa_names(void) {
  static const std::string names = [] {
    std::string s;
    for (const bonsai::Isa& isa : bonsai::kIsas) s += (s.empty() ? "" : ",") + std::string(isa.name);
    return s;
  }();
  return names.c_str();
}

int bonsai_isa_supported(const char* name) { return name && bonsai::lookup(name) ? 1 : 0; }

int bonsai_set_isa(const char* name) {
  bonsai::init_once();
  if (!name) return bonsai::fail(BONSAI_ERR_NULL, "bonsai_set_isa: name is null");
  const bonsai::KernelTable* t = bonsai::lookup(name);
  if (!t) {
    return bonsai::fail(BONSAI_ERR_ISA, std::string("bonsai_set_isa: ISA '") + name + "' is " +
                                            (bonsai::known_name(name) ? "not supported by this CPU" : "unknown") + " (expected " +
                                            bonsai::expected_names() + ")");
  }
  bonsai::g_table.store(t, std::memory_order_release);
  return BONSAI_OK;
}

}  // extern "C"
