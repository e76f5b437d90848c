// tokenizer_text.h's helpers that are not inline.
#include "tokenizer_text.h"

#include <algorithm>
#include <functional>
#include <iterator>

namespace bonsai_runner::text {
namespace {

// ByteAlphabet and its one instance: `byte_of` inverts `char_of` over U+0000..U+0143 (-1: no byte).
struct ByteAlphabet {
  uint32_t char_of[256];
  int16_t byte_of[0x144];
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet = [] {
    ByteAlphabet a{};
    std::fill(std::begin(a.byte_of), std::end(a.byte_of), int16_t(-1));
    uint32_t next = 0x100;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
      a.char_of[b] = printable ? b : next++;
      a.byte_of[a.char_of[b]] = int16_t(b);
    }
    return a;
  }();
  return alphabet;
}

}  // namespace

std::string lossy_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (const size_t n = utf8_length(s, i)) {
      out.append(s, i, n);
      i += n;
      continue;
    }
    const unsigned lead = static_cast<unsigned char>(s[i]);
    const size_t need = lead >= 0xc2 && lead <= 0xdf   ? 2
                        : lead >= 0xe0 && lead <= 0xef ? 3
                        : lead >= 0xf0 && lead <= 0xf4 ? 4
                                                       : 1;
    const unsigned lo = lead == 0xe0 ? 0xa0 : lead == 0xf0 ? 0x90 : 0x80;
    const unsigned hi = lead == 0xed ? 0x9f : lead == 0xf4 ? 0x8f : 0xbf;
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
    size_t len = 1;
    if (need > 1 && i + 1 < s.size() && byte(1) >= lo && byte(1) <= hi)
      for (len = 2; len < need && i + len < s.size() && (byte(len) & 0xc0) == 0x80;) ++len;
    out += kReplacement;
    i += len;
  }
  return out;
}

std::string alphabet_piece(unsigned b) {
  const uint32_t cp = byte_alphabet().char_of[b];
  std::string out;
  if (cp < 0x80) out += char(cp);
  else out += char(0xc0 | cp >> 6), out += char(0x80 | (cp & 0x3f));
  return out;
}

bool alphabet_bytes(std::string_view text, std::string& out) {
  out.clear();
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_length(text, i);
    const uint32_t cp = n ? code_point(text, i, n) : 0x144;
    if (cp >= 0x144 || byte_alphabet().byte_of[cp] < 0) return false;
    out += char(byte_alphabet().byte_of[cp]);
    i += n;
  }
  return true;
}

uint64_t hash_bytes(std::string_view s) {
  const uint64_t h = std::hash<std::string_view>()(s);
  return h == ~uint64_t(0) ? 0 : h;
}

}  // namespace bonsai_runner::text
