// The artifact's tokenizer: a `tokenizers` pipeline read from its tokenizer.json, limited to the subset of
// docs/TOKENIZER.md, in two families:
// - SentencePiece-style BPE (Llama-2, Mistral): byte fallback; Metaspace or the legacy Prepend + Replace
//   normalizer for spaces; the Replace, ByteFallback, Fuse [, Strip] decoder;
// - byte-level BPE (Qwen2/Qwen3, Llama-3): optional NFC, the Split regex of Qwen2 or Llama-3 (pretokenize.h), every
//   byte one symbol of GPT-2's byte alphabet; the ByteLevel decoder.
// Both: added tokens split first; TemplateProcessing for BOS / EOS. Within the subset, ids and text equal raw
// `tokenizers` (Tokenizer.from_file(...).encode(text).ids, .decode(ids, skip_special_tokens=True)), which equal
// transformers' for the artifact's checkpoint. A file outside the subset is refused at load with one line naming
// the part, never approximated.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "pretokenize.h"

namespace bonsai_runner {

// A tokenizer.json that cannot be read, or one outside the subset: what() is one line naming the part.
class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Open-addressing hash table from 64-bit keys (never ~0) to small values. The merge table is probed for every
// candidate pair and rebuilt at every start; std::unordered_map's node per entry made the load ~2x slower.
template <class V>
class FlatMap {
 public:
  void reserve(size_t n) {
    size_t capacity = 16;
    while (capacity < 2 * n) capacity <<= 1;  // at most half full: probes stay short
    keys_.assign(capacity, kEmpty);
    values_.assign(capacity, V{});
  }
  V& operator[](uint64_t key) {  // inserts V{} when absent; reserve() must have room for every key
    size_t i = slot(key);
    while (keys_[i] != key && keys_[i] != kEmpty) i = (i + 1) & (keys_.size() - 1);
    keys_[i] = key;
    return values_[i];
  }
  const V* find(uint64_t key) const {
    if (keys_.empty()) return nullptr;
    for (size_t i = slot(key);; i = (i + 1) & (keys_.size() - 1)) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  size_t slot(uint64_t key) const { return size_t((key * 0x9e3779b97f4a7c15ull) >> 32) & (keys_.size() - 1); }
  std::vector<uint64_t> keys_;
  std::vector<V> values_;
};

class BpeTokenizer {
 public:
  // Reads `path` (throws TokenizerError).
  explicit BpeTokenizer(const std::string& path);

  // Ids of `text` (UTF-8; throws TokenizerError on invalid UTF-8), the post-processor's BOS / EOS included.
  std::vector<int32_t> encode(const std::string& text) const;
  // Text of `ids`; special added tokens and ids without a piece are skipped.
  std::string decode(const std::vector<int32_t>& ids) const;
  // The words BPE runs on, in order (the text between added tokens, spaced or normalized and split as the
  // pipeline says; byte-level words as their UTF-8 bytes): what the pre-tokenizer cut, for tests.
  std::vector<std::string> words(const std::string& text) const;
  // 1 + the largest id a piece or added token has: the logits a model over this tokenizer has.
  size_t id_count() const { return pieces_.size(); }

  enum class Kind { kSentencePiece, kByteLevel };
  enum class Prefix { kLegacy, kFirst, kAlways, kNever };  // how a segment gets its leading U+2581
  struct Piece {
    std::string text;    // "" for an id nothing uses
    int16_t byte = -1;   // <0xNN> pieces: NN, which the decoder turns back into a byte
    bool skip = false;   // decode drops it: special added tokens
  };
  struct AddedToken {
    std::string content;
    int32_t id;
  };
  struct Merge {
    uint32_t rank = 0;   // position in `merges`: lower merges first
    int32_t merged = 0;  // id of left + right
  };

 private:
  friend class TokenizerBuilder;
  friend class TextStream;
  BpeTokenizer() = default;

  struct Symbol {
    int32_t id, prev, next;
    uint32_t len;  // bytes covered; 0 once merged into its left neighbour
  };

  // Cuts out the added tokens (their ids go to `ids`) and calls `segment(text, start)` for the text between.
  template <class Segment>
  void split_added(const std::string& text, std::vector<int32_t>& ids, Segment&& segment) const;
  void encode_segment(const std::string& segment, size_t start, std::vector<int32_t>& out) const;
  std::vector<std::string> segment_words(const std::string& segment, size_t start) const;
  std::string with_spaces(const std::string& segment, size_t start) const;
  void bpe(const std::string& word, std::vector<int32_t>& out) const;
  void byte_level_bpe(std::string_view word, std::vector<int32_t>& out) const;
  void merge(std::vector<Symbol>& symbols, std::vector<int32_t>& out) const;
  const Merge* find_merge(int32_t left, int32_t right) const;
  std::string decode_byte_level(const std::vector<int32_t>& ids) const;

  std::vector<Piece> pieces_;                         // by id
  FlatMap<int32_t> char_ids_;                         // code point -> id of the piece that is exactly it
  std::vector<int32_t> byte_ids_;                     // byte -> id of <0xNN> (256 entries), -1 when absent;
                                                      // byte-level: the id of the byte's alphabet character
  int32_t unk_id_ = -1;                               // -1: unk_token null (an unknown character is dropped)
  FlatMap<Merge> merges_;                             // (left << 32 | right) -> merge
  std::vector<AddedToken> added_;                     // longest first, so the first match is the longest
  std::vector<uint32_t> added_by_byte_[256];          // first byte -> indices into added_
  Prefix prefix_ = Prefix::kFirst;
  std::vector<int32_t> before_, after_;               // the single template's special tokens around $A
  bool strip_space_ = false;                          // decoder ends with Strip(" ", 1, 0)
  Kind kind_ = Kind::kSentencePiece;
  SplitPattern split_ = SplitPattern::kQwen2;         // byte-level: the pre-tokenizer's regex
  bool nfc_ = false;                                  // byte-level: the NFC normalizer
  bool ignore_merges_ = false;                        // byte-level: a word that is a piece is taken whole
  FlatMap<int32_t> words_;                            // ignore_merges: hash of a piece's bytes -> its id
};

// Text deltas of a growing list of ids, to show text while it is generated: the deltas, concatenated, are
// decode(context + ids) less decode(context) (a context ending inside a run of byte pieces excepted). No delta shows
// text a later id could change: byte-level holds back a character cut short at the end (decoding ends in U+FFFD);
// SentencePiece holds back a run of byte pieces until a piece that is not a byte ends it, since the run is read as
// UTF-8 as a whole.
class TextStream {
 public:
  explicit TextStream(const BpeTokenizer& tokenizer, const std::vector<int32_t>& context = {});
  std::string push(int32_t id);
  std::string flush();  // what is still held back, at the end

 private:
  std::string emit();
  const BpeTokenizer& tokenizer_;
  std::vector<int32_t> ids_;  // byte-level: since the last delta (decoding restarts cleanly there); else all
  std::string shown_;         // the text of ids_ given out already
  bool in_run_ = false;       // SentencePiece: the last piece that is not skipped is a byte piece
};

}  // namespace bonsai_runner
