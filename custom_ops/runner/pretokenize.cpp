// NFC and the Split regexes of the byte-level layouts, as plain code (pretokenize.h). The regexes' alternatives
// are tried in order at each position, each with the backtracking Oniguruma would do, as the comments derive.
#include "pretokenize.h"

#include <algorithm>

#include "unicode_tables.h"

namespace bonsai_runner {
namespace {

// ---- UTF-8 (the callers pass well-formed text: BpeTokenizer::encode checks it) ----

struct Decoded {
  std::vector<uint32_t> cps;
  std::vector<size_t> offsets;  // byte offset of each code point, plus the text's size at the end
};

Decoded decode_utf8(std::string_view s) {
  Decoded d;
  d.cps.reserve(s.size());
  d.offsets.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size();) {
    const unsigned lead = static_cast<unsigned char>(s[i]);
    const size_t n = lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
    uint32_t cp = n == 1 ? lead : n == 2 ? lead & 0x1f : n == 3 ? lead & 0x0f : lead & 0x07;
    for (size_t k = 1; k < n && i + k < s.size(); ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    d.cps.push_back(cp);
    d.offsets.push_back(i);
    i += n;
  }
  d.offsets.push_back(s.size());
  return d;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xc0 | cp >> 6), out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += char(0xe0 | cp >> 12), out += char(0x80 | (cp >> 6 & 0x3f)), out += char(0x80 | (cp & 0x3f));
  } else {
    out += char(0xf0 | cp >> 18), out += char(0x80 | (cp >> 12 & 0x3f)), out += char(0x80 | (cp >> 6 & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  }
}

template <class R, size_t N>
const R* find_range(const R (&table)[N], uint32_t cp) {
  const R* it = std::upper_bound(table, table + N, cp, [](uint32_t c, const R& r) { return c < r.lo; });
  return it != table && cp <= (it - 1)->hi ? it - 1 : nullptr;
}

// ---- NFC (Unicode Standard Annex #15), Hangul syllables algorithmically ----

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const unicode::ClassRange* r = find_range(unicode::kCombiningClasses, cp);
  return r ? r->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + s % kNCount / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto& table = unicode::kDecompositions;
  const auto* it = std::lower_bound(std::begin(table), std::end(table), cp,
                                    [](const unicode::Decomposition& d, uint32_t c) { return d.cp < c; });
  if (cp < 0xC0 || it == std::end(table) || it->cp != cp) {
    out.push_back(cp);
    return;
  }
  out.insert(out.end(), unicode::kDecompositionData + it->at, unicode::kDecompositionData + it->at + it->size);
}

// The primary composite of (first, second), or 0.
uint32_t compose(uint32_t first, uint32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount)
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 && second > kTBase &&
      second < kTBase + kTCount)
    return first + (second - kTBase);
  const auto& table = unicode::kCompositions;
  const auto* it = std::lower_bound(std::begin(table), std::end(table), std::make_pair(first, second),
                                    [](const unicode::Composition& c, const std::pair<uint32_t, uint32_t>& key) {
                                      return std::make_pair(c.first, c.second) < key;
                                    });
  return it != std::end(table) && it->first == first && it->second == second ? it->composite : 0;
}

// Canonical ordering: a stable sort of each run of non-starters by combining class.
void order_marks(std::vector<uint32_t>& cps) {
  for (size_t i = 0; i < cps.size();) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < cps.size() && combining_class(cps[end]) != 0) ++end;
    std::stable_sort(cps.begin() + long(i), cps.begin() + long(end),
                     [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = end;
  }
}

// Canonical composition: a mark joins the last starter unless something between them blocks it (a starter, or a
// mark of the same or a higher class).
void compose_all(std::vector<uint32_t>& cps) {
  if (cps.empty()) return;
  size_t starter = 0, out = 1;
  int last_class = combining_class(cps[0]) ? 256 : 0;  // a text that opens with a mark has no starter yet
  for (size_t i = 1; i < cps.size(); ++i) {
    const int cls = combining_class(cps[i]);
    const uint32_t composite = last_class < 256 ? compose(cps[starter], cps[i]) : 0;
    if (composite && (last_class < cls || last_class == 0)) {
      cps[starter] = composite;
      continue;
    }
    if (cls == 0) starter = out;
    last_class = cls;
    cps[out++] = cps[i];
  }
  cps.resize(out);
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// ---- the Split regexes ----

bool is_other(uint32_t cp) { return !unicode::is_space(cp) && !unicode::is_letter(cp) && !unicode::is_number(cp); }
bool is_newline(uint32_t cp) { return cp == '\r' || cp == '\n'; }

// (?i:...) on the contraction letters: ASCII case, and U+017F LONG S, which case-folds to 's'.
uint32_t fold(uint32_t cp) { return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp == 0x17F ? 's' : cp; }

// (?i:'s|'t|'re|'ve|'m|'ll|'d): the end of the match at i, or i.
size_t contraction(const std::vector<uint32_t>& c, size_t i) {
  if (c[i] != '\'' || i + 1 >= c.size()) return i;
  const uint32_t a = fold(c[i + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  const uint32_t b = i + 2 < c.size() ? fold(c[i + 2]) : 0;
  return (a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l') ? i + 3 : i;
}

// [^\r\n\p{L}\p{N}]?\p{L}+: the optional lead is taken only when a letter follows it (else backtracking drops it,
// and a text at i that is no letter fails).
size_t word(const std::vector<uint32_t>& c, size_t i) {
  size_t j = i;
  if (!unicode::is_letter(c[j]) && !unicode::is_number(c[j]) && !is_newline(c[j])) ++j;
  if (j >= c.size() || !unicode::is_letter(c[j])) return i;
  while (j < c.size() && unicode::is_letter(c[j])) ++j;
  return j;
}

// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
size_t punctuation(const std::vector<uint32_t>& c, size_t i) {
  size_t j = c[i] == ' ' ? i + 1 : i;
  if (j >= c.size() || !is_other(c[j])) return i;
  while (j < c.size() && is_other(c[j])) ++j;
  while (j < c.size() && is_newline(c[j])) ++j;
  return j;
}

// \s*[\r\n]+|\s+(?!\S)|\s+ at a white space character i, over its run [i, end):
//   \s*[\r\n]+ backtracks to the run's last \r or \n and ends after it;
//   \s+(?!\S) takes the whole run at the end of the text, else all but its last character (when that leaves one);
//   \s+ takes the whole run.
size_t spaces(const std::vector<uint32_t>& c, size_t i) {
  size_t end = i;
  while (end < c.size() && unicode::is_space(c[end])) ++end;
  for (size_t k = end; k > i; --k)
    if (is_newline(c[k - 1])) return k;
  if (end == c.size() || end - i < 2) return end;
  return end - 1;
}

size_t match_at(const std::vector<uint32_t>& c, size_t i, SplitPattern pattern) {
  if (size_t j = contraction(c, i); j > i) return j;
  if (size_t j = word(c, i); j > i) return j;
  if (unicode::is_number(c[i])) {
    size_t j = i + 1;
    if (pattern == SplitPattern::kLlama3)
      while (j < c.size() && j < i + 3 && unicode::is_number(c[j])) ++j;
    return j;
  }
  if (size_t j = punctuation(c, i); j > i) return j;
  return spaces(c, i);  // every other character is white space
}

}  // namespace

namespace unicode {
bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return find_range(kLetters, cp) != nullptr;
}
bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return find_range(kNumbers, cp) != nullptr;
}
bool is_space(uint32_t cp) { return find_range(kWhiteSpace, cp) != nullptr; }
}  // namespace unicode

const char* split_regex(SplitPattern pattern) {
  return pattern == SplitPattern::kQwen2
             ? R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"
             : R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
}

std::string nfc(std::string_view text) {
  if (is_ascii(text)) return std::string(text);  // the common case: ASCII is always NFC
  std::vector<uint32_t> cps;
  cps.reserve(text.size());
  for (uint32_t cp : decode_utf8(text).cps) decompose(cp, cps);
  order_marks(cps);
  compose_all(cps);
  std::string out;
  out.reserve(text.size());
  for (uint32_t cp : cps) append_utf8(out, cp);
  return out;
}

std::vector<std::pair<size_t, size_t>> split_words(std::string_view text, SplitPattern pattern) {
  const Decoded d = decode_utf8(text);
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t i = 0; i < d.cps.size();) {
    const size_t end = std::max(match_at(d.cps, i, pattern), i + 1);  // never empty, so always progress
    out.emplace_back(d.offsets[i], d.offsets[end]);
    i = end;
  }
  return out;
}

}  // namespace bonsai_runner
