// BpeTokenizer's encoding and decoding (docs/TOKENIZER.md, steps 1-5 of each family); the file is read in
// bpe_tokenizer.cpp.
#include <algorithm>
#include <functional>
#include <queue>
#include <string_view>
#include <utility>

#include "bpe_tokenizer.h"
#include "tokenizer_text.h"

namespace bonsai_runner {

using namespace text;

// ---- encoding ----

std::vector<int32_t> BpeTokenizer::encode(const std::string& text) const {
  const size_t bad = invalid_utf8_at(text);
  if (bad != std::string_view::npos) throw TokenizerError("not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<int32_t> ids(before_);
  split_added(text, ids, [&](const std::string& segment, size_t start) { encode_segment(segment, start, ids); });
  ids.insert(ids.end(), after_.begin(), after_.end());
  return ids;
}

std::vector<std::string> BpeTokenizer::words(const std::string& text) const {
  const size_t bad = invalid_utf8_at(text);
  if (bad != std::string_view::npos) throw TokenizerError("not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<int32_t> added;
  std::vector<std::string> out;
  split_added(text, added, [&](const std::string& segment, size_t start) {
    for (std::string& w : segment_words(segment, start)) out.push_back(std::move(w));
  });
  return out;
}

// Added tokens, leftmost-longest; the text between them is passed on as segments.
template <class Segment>
void BpeTokenizer::split_added(const std::string& text, std::vector<int32_t>& ids, Segment&& segment) const {
  size_t start = 0;  // of the text not yet passed on
  for (size_t i = 0; i < text.size();) {
    const AddedToken* match = nullptr;
    for (uint32_t k : added_by_byte_[static_cast<unsigned char>(text[i])]) {
      if (text.compare(i, added_[k].content.size(), added_[k].content) == 0) {
        match = &added_[k];
        break;
      }
    }
    if (!match) {
      ++i;
      continue;
    }
    if (i > start) segment(text.substr(start, i - start), start);
    ids.push_back(match->id);
    i += match->content.size();
    start = i;
  }
  if (start < text.size()) segment(text.substr(start), start);
}

void BpeTokenizer::encode_segment(const std::string& segment, size_t start, std::vector<int32_t>& out) const {
  if (kind_ == Kind::kSentencePiece) return bpe(with_spaces(segment, start), out);
  const std::string text = nfc_ ? nfc(segment) : segment;
  for (const auto& [begin, end] : split_words(text, split_))
    byte_level_bpe(std::string_view(text).substr(begin, end - begin), out);
}

std::vector<std::string> BpeTokenizer::segment_words(const std::string& segment, size_t start) const {
  if (kind_ == Kind::kSentencePiece) return {with_spaces(segment, start)};
  const std::string text = nfc_ ? nfc(segment) : segment;
  std::vector<std::string> out;
  for (const auto& [begin, end] : split_words(text, split_)) out.push_back(text.substr(begin, end - begin));
  return out;
}

// Spaces become U+2581, and the segment gets its leading U+2581 as the pipeline says; `start` is the segment's
// byte offset in the whole text (Metaspace "first" prefixes only the segment at 0).
std::string BpeTokenizer::with_spaces(const std::string& segment, size_t start) const {
  std::string out = prefix_ == Prefix::kLegacy ? kMarker : "";
  out.reserve(out.size() + segment.size() * 3);
  for (char c : segment) {
    if (c == ' ') out += kMarker;
    else out += c;
  }
  const bool marked = out.compare(0, kMarker.size(), kMarker) == 0;
  if (!marked && (prefix_ == Prefix::kAlways || (prefix_ == Prefix::kFirst && start == 0))) out.insert(0, kMarker);
  return out;
}

const BpeTokenizer::Merge* BpeTokenizer::find_merge(int32_t left, int32_t right) const {
  return merges_.find(uint64_t(uint32_t(left)) << 32 | uint32_t(right));
}

// SentencePiece-style BPE of one segment: one symbol per code point (byte pieces or unk when it is no piece), then
// merged (a prompt is one segment: there is no split on spaces).
void BpeTokenizer::bpe(const std::string& word, std::vector<int32_t>& out) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](int32_t id, size_t len) {
    const int32_t at = int32_t(symbols.size());
    symbols.push_back({id, at - 1, at + 1, uint32_t(len)});
  };
  size_t unk_len = 0;  // unknown characters waiting to become one fused unk
  for (size_t i = 0; i < word.size();) {
    const size_t n = utf8_length(word, i);  // > 0: encode() checked the text, and U+2581 is well-formed
    const int32_t* piece = char_ids_.find(code_point(word, i, n));
    const auto has_byte_piece = [&](char b) { return byte_ids_[static_cast<unsigned char>(b)] >= 0; };
    if (piece) {
      if (unk_len) add(unk_id_, unk_len), unk_len = 0;
      add(*piece, n);
    } else if (std::all_of(word.begin() + long(i), word.begin() + long(i + n), has_byte_piece)) {
      // tokenizers emits a pending unk only before a vocabulary piece or at the end, so byte pieces can come
      // before it; kept for identical ids (reachable only when some <0xNN> pieces are missing).
      for (size_t k = i; k < i + n; ++k) add(byte_ids_[static_cast<unsigned char>(word[k])], 1);
    } else if (unk_id_ >= 0) {
      unk_len += n;  // with unk_token null, tokenizers drops the character
    }
    i += n;
  }
  if (unk_len) add(unk_id_, unk_len);
  merge(symbols, out);
}

// Byte-level BPE of one pre-tokenized word: one symbol per byte (the vocabulary holds the whole alphabet), then
// merged; with ignore_merges a word that is a piece is that piece, as tokenizers looks it up first.
void BpeTokenizer::byte_level_bpe(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    std::string bytes;
    const int32_t* id = words_.find(hash_bytes(word));
    if (id && alphabet_bytes(pieces_[size_t(*id)].text, bytes) && bytes == word) {
      out.push_back(*id);
      return;
    }
  }
  std::vector<Symbol> symbols(word.size());
  for (size_t i = 0; i < word.size(); ++i)
    symbols[i] = {byte_ids_[static_cast<unsigned char>(word[i])], int32_t(i) - 1, int32_t(i) + 1, 1};
  merge(symbols, out);
}

// Repeatedly merges the adjacent pair of lowest rank, leftmost first, until none is a merge. A heap of candidate
// pairs keeps this O(n log n) in the number of symbols.
void BpeTokenizer::merge(std::vector<Symbol>& symbols, std::vector<int32_t>& out) const {
  if (symbols.empty()) return;
  symbols.back().next = -1;
  struct Candidate {
    uint32_t rank, pos;
    int32_t merged;
    bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Candidate> storage;
  storage.reserve(symbols.size());
  std::priority_queue<Candidate> queue(std::less<Candidate>(), std::move(storage));
  const auto push = [&](int32_t pos) {
    const int32_t next = symbols[size_t(pos)].next;
    if (next < 0) return;
    if (const Merge* m = find_merge(symbols[size_t(pos)].id, symbols[size_t(next)].id))
      queue.push({m->rank, uint32_t(pos), m->merged});
  };
  for (int32_t pos = 0; pos + 1 < int32_t(symbols.size()); ++pos) push(pos);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next < 0) continue;  // merged away, or the last symbol now
    const Merge* now = find_merge(left.id, symbols[size_t(left.next)].id);
    if (!now || now->merged != top.merged) continue;  // the pair changed since it was queued
    Symbol& right = symbols[size_t(left.next)];
    left.id = top.merged, left.len += right.len, left.next = right.next;
    right.len = 0;
    if (left.next >= 0) symbols[size_t(left.next)].prev = int32_t(top.pos);
    if (left.prev >= 0) push(left.prev);
    push(int32_t(top.pos));
  }
  for (const Symbol& s : symbols)
    if (s.len) out.push_back(s.id);
}

// ---- decoding ----

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  if (kind_ == Kind::kByteLevel) return decode_byte_level(ids);
  // The decoder Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)?]: a run of byte pieces becomes
  // its bytes when they are UTF-8 as a whole, else one U+FFFD per byte (tokenizers' ByteFallback), the rest their
  // text.
  std::string out, run;
  const auto flush = [&] {
    if (invalid_utf8_at(run) == std::string_view::npos) out += run;
    else
      for (size_t k = 0; k < run.size(); ++k) out += kReplacement;
    run.clear();
  };
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= pieces_.size() || pieces_[size_t(id)].skip) continue;
    const Piece& p = pieces_[size_t(id)];
    if (p.byte >= 0) {
      run.push_back(char(p.byte));
      continue;
    }
    flush();
    for (size_t i = 0; i < p.text.size();) {
      const bool marker = p.text.compare(i, kMarker.size(), kMarker) == 0;
      out += marker ? ' ' : p.text[i];
      i += marker ? kMarker.size() : 1;
    }
  }
  flush();
  if (strip_space_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

// The ByteLevel decoder: a token whose characters are all of the byte alphabet stands for those bytes, any other
// (an added token such as "<think>" with characters past it) for its own UTF-8; the bytes of all tokens are then
// read as UTF-8 together, lossily.
std::string BpeTokenizer::decode_byte_level(const std::vector<int32_t>& ids) const {
  std::string bytes, one;
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= pieces_.size() || pieces_[size_t(id)].skip) continue;
    const std::string& text = pieces_[size_t(id)].text;
    bytes += alphabet_bytes(text, one) ? one : text;
  }
  return lossy_utf8(bytes);
}

// ---- streaming ----

TextStream::TextStream(const BpeTokenizer& tokenizer, const std::vector<int32_t>& context) : tokenizer_(tokenizer) {
  for (int32_t id : context) push(id);
  flush();
}

std::string TextStream::push(int32_t id) {
  ids_.push_back(id);
  if (tokenizer_.kind_ == BpeTokenizer::Kind::kSentencePiece) {
    const bool known = id >= 0 && size_t(id) < tokenizer_.pieces_.size();
    const bool skipped = !known || tokenizer_.pieces_[size_t(id)].skip;  // skipped ids do not end a run
    if (!skipped) in_run_ = tokenizer_.pieces_[size_t(id)].byte >= 0;
    if (in_run_ || skipped) return "";
  }
  return emit();
}

std::string TextStream::flush() {
  in_run_ = false;
  std::string text = tokenizer_.decode(ids_);
  std::string delta = text.substr(std::min(shown_.size(), text.size()));
  shown_ = std::move(text);
  if (tokenizer_.kind_ == BpeTokenizer::Kind::kByteLevel) ids_.clear(), shown_.clear();
  return delta;
}

std::string TextStream::emit() {
  const std::string text = tokenizer_.decode(ids_);
  const std::string replacement = kReplacement;
  const bool cut = text.size() >= replacement.size() &&
                   text.compare(text.size() - replacement.size(), replacement.size(), replacement) == 0;
  if (tokenizer_.kind_ == BpeTokenizer::Kind::kByteLevel && cut) return "";  // the character may still complete
  return flush();
}

}  // namespace bonsai_runner
