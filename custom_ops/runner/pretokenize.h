// The byte-level BPE pre-tokenizer (docs/TOKENIZER.md, "Byte-level BPE"): the NFC normalizer and the Split
// regexes of Qwen2 and Llama-3, hand-written as plain code over the Unicode tables of unicode_tables.h (generated
// by gen_unicode_tables.py), so the runner needs no regex engine or Unicode library and cross-compiles anywhere.
// Within the subset, the cuts equal `tokenizers`' (Oniguruma's leftmost-first matching of those regexes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bonsai_runner {

enum class SplitPattern {
  kQwen2,   // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,  // the same with \p{N}{1,3}: digits three at a time
};

// The regex of a pattern, exactly as tokenizer.json spells it (the file is matched against these strings).
const char* split_regex(SplitPattern pattern);

// NFC of well-formed UTF-8 `text` (decompose canonically, order combining marks, compose).
std::string nfc(std::string_view text);

// Byte ranges [begin, end) of the pieces Split(pattern, Isolated) cuts well-formed UTF-8 `text` into: every match
// is a piece, and the matches cover the text (every character starts some alternative).
std::vector<std::pair<size_t, size_t>> split_words(std::string_view text, SplitPattern pattern);

namespace unicode {
bool is_letter(uint32_t cp);  // \p{L}
bool is_number(uint32_t cp);  // \p{N}
bool is_space(uint32_t cp);   // \s: White_Space
}  // namespace unicode

}  // namespace bonsai_runner
