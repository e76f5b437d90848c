// Text helpers shared by the tokenizer's sources: well-formed UTF-8 (Unicode Table 3-7), the lossy reading the
// ByteLevel decoder ends with, and GPT-2's byte alphabet of byte-level BPE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bonsai_runner::text {

inline const std::string kMarker = "\xe2\x96\x81";   // U+2581, SentencePiece's visible space
inline constexpr const char* kReplacement = "\xef\xbf\xbd";  // U+FFFD

// Length of the well-formed UTF-8 sequence at s[i] (Unicode Table 3-7: no overlong forms, surrogates or code
// points past U+10FFFF, as Rust's from_utf8 in `tokenizers` and Python's decoder require), or 0.
inline size_t utf8_length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned lead = byte(0);
  if (lead < 0x80) return 1;
  size_t n = 0;
  unsigned lo = 0x80, hi = 0xbf;  // the range of the second byte
  if (lead >= 0xc2 && lead <= 0xdf) n = 2;
  else if (lead >= 0xe0 && lead <= 0xef) n = 3, lo = lead == 0xe0 ? 0xa0 : lo, hi = lead == 0xed ? 0x9f : hi;
  else if (lead >= 0xf0 && lead <= 0xf4) n = 4, lo = lead == 0xf0 ? 0x90 : lo, hi = lead == 0xf4 ? 0x8f : hi;
  if (n == 0 || i + n > s.size() || byte(1) < lo || byte(1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if ((byte(k) & 0xc0) != 0x80) return 0;
  return n;
}

inline bool is_one_char(std::string_view s) { return !s.empty() && utf8_length(s, 0) == s.size(); }

inline uint32_t code_point(std::string_view s, size_t i, size_t n) {
  static constexpr unsigned kLeadMask[] = {0, 0x7f, 0x1f, 0x0f, 0x07};
  uint32_t cp = static_cast<unsigned char>(s[i]) & kLeadMask[n];
  for (size_t k = 1; k < n; ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return cp;
}

// Byte offset of the first ill-formed sequence, or npos.
inline size_t invalid_utf8_at(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

// Rust's String::from_utf8_lossy, as the ByteLevel decoder ends: each maximal ill-formed subpart (a lead byte and
// the continuation bytes that still fit a well-formed sequence, or one stray byte) becomes one U+FFFD.
std::string lossy_utf8(std::string_view s);

// Byte-level BPE's alphabet: byte b is the code point b when printable Latin-1 (0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF),
// the other 68 bytes take U+0100 on, in byte order.
// The UTF-8 text of byte b's character: the vocabulary piece that stands for the byte.
std::string alphabet_piece(unsigned b);
// The bytes a piece stands for when every character of it is an alphabet character; false otherwise.
bool alphabet_bytes(std::string_view text, std::string& out);

// A FlatMap key for some bytes (never ~0, which marks an empty slot).
uint64_t hash_bytes(std::string_view s);

}  // namespace bonsai_runner::text
