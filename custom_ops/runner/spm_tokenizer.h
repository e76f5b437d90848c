// SentencePiece BPE tokenizer for the runner (Bonsai = Mistral v1 tokenizer.model): enough of SentencePiece to
// encode a prompt and decode generated ids on a phone without a tokenizer library. The .model file is a protobuf
// ModelProto; only three fields matter here, so it is read with a dozen lines of wire-format parsing:
//   ModelProto.pieces (1): SentencePiece { piece (1) string, score (2) float, type (3) enum }
//   ModelProto.normalizer_spec (3): NormalizerSpec { add_dummy_prefix (3) bool, default true }
// Encoding is SentencePiece's BPE: spaces become U+2581, a U+2581 is prepended, the text is split into code
// points, and the adjacent pair whose concatenation is the best-scoring vocabulary piece is merged until none
// is; a symbol missing from the vocabulary falls back to its UTF-8 bytes (<0xNN> pieces).
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace bonsai_runner {

class SpmTokenizer {
 public:
  explicit SpmTokenizer(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    std::stringstream buffer;
    buffer << f.rdbuf();
    const std::string data = buffer.str();
    parse_model(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    if (pieces_.empty()) throw std::runtime_error(path + ": no pieces (not a SentencePiece model?)");
    for (size_t id = 0; id < pieces_.size(); ++id) {
      Piece& p = pieces_[id];
      if (p.type == kByte && p.text.size() == 6) {
        p.byte = uint8_t(std::stoi(p.text.substr(3, 2), nullptr, 16));
        byte_ids_[p.byte] = int32_t(id);
      }
      if (p.type == kNormal || p.type == kUserDefined) ids_.emplace(p.text, int32_t(id));
      if (p.type == kUnknown) unk_id_ = int32_t(id);
    }
  }

  size_t vocab_size() const { return pieces_.size(); }

  std::vector<int32_t> encode(const std::string& text) const {
    std::string normalized = add_dummy_prefix_ && !text.empty() ? kSpace : "";
    for (char c : text) normalized += c == ' ' ? kSpace : std::string(1, c);
    std::vector<std::string> symbols = split_code_points(normalized);
    merge_pairs(symbols);
    std::vector<int32_t> ids;
    for (const std::string& s : symbols) {
      const auto it = ids_.find(s);
      if (it != ids_.end()) {
        ids.push_back(it->second);
        continue;
      }
      for (unsigned char byte : s) ids.push_back(byte_ids_[byte] >= 0 ? byte_ids_[byte] : unk_id_);
    }
    return ids;
  }

  // Text of `ids`, decoded as one run: byte pieces are joined before UTF-8 is formed, U+2581 becomes a space,
  // and control pieces (<s>, </s>) print nothing.
  std::string decode(const std::vector<int32_t>& ids) const {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || size_t(id) >= pieces_.size()) continue;
      const Piece& p = pieces_[size_t(id)];
      if (p.type == kControl) continue;
      if (p.type == kByte) {
        out += char(p.byte);
        continue;
      }
      for (size_t i = 0; i < p.text.size();) {
        if (p.text.compare(i, kSpace.size(), kSpace) == 0) {
          out += ' ';
          i += kSpace.size();
        } else {
          out += p.text[i++];
        }
      }
    }
    return out;
  }

 private:
  enum Type { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  struct Piece {
    std::string text;
    float score = 0.f;
    int type = kNormal;
    uint8_t byte = 0;  // byte pieces (<0xNN>): NN, parsed once at load
  };
  inline static const std::string kSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's visible space

  std::vector<Piece> pieces_;
  std::unordered_map<std::string, int32_t> ids_;
  int32_t byte_ids_[256] = {};
  int32_t unk_id_ = 0;
  bool add_dummy_prefix_ = true;

  // ---- protobuf wire format: (field << 3 | wire type) keys, varints, length-delimited and fixed32 values ----
  struct Reader {
    const uint8_t* p;
    const uint8_t* end;
    uint64_t varint() {
      uint64_t v = 0;
      for (int shift = 0; shift < 64; shift += 7) {
        if (p >= end) throw std::runtime_error("tokenizer.model: truncated varint");
        const uint8_t b = *p++;
        v |= uint64_t(b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
      }
      throw std::runtime_error("tokenizer.model: bad varint");
    }
    Reader sub(uint64_t size) {
      if (size > uint64_t(end - p)) throw std::runtime_error("tokenizer.model: truncated field");
      Reader r{p, p + size};
      p += size;
      return r;
    }
    void skip(uint32_t wire) {
      if (wire == 0) varint();
      else if (wire == 1) sub(8);
      else if (wire == 2) sub(varint());
      else if (wire == 5) sub(4);
      else throw std::runtime_error("tokenizer.model: unsupported wire type");
    }
  };

  void parse_model(const uint8_t* data, size_t size) {
    std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
    for (Reader r{data, data + size}; r.p < r.end;) {
      const uint64_t key = r.varint();
      const uint32_t field = uint32_t(key >> 3), wire = uint32_t(key & 7);
      if (field == 1 && wire == 2) pieces_.push_back(parse_piece(r.sub(r.varint())));
      else if (field == 3 && wire == 2) parse_normalizer(r.sub(r.varint()));
      else r.skip(wire);
    }
  }

  static Piece parse_piece(Reader r) {
    Piece piece;
    while (r.p < r.end) {
      const uint64_t key = r.varint();
      const uint32_t field = uint32_t(key >> 3), wire = uint32_t(key & 7);
      if (field == 1 && wire == 2) {
        Reader s = r.sub(r.varint());
        piece.text.assign(reinterpret_cast<const char*>(s.p), size_t(s.end - s.p));
      } else if (field == 2 && wire == 5) {
        Reader s = r.sub(4);
        std::memcpy(&piece.score, s.p, 4);  // little-endian fixed32, as on every target we build for
      } else if (field == 3 && wire == 0) {
        piece.type = int(r.varint());
      } else {
        r.skip(wire);
      }
    }
    return piece;
  }

  void parse_normalizer(Reader r) {
    while (r.p < r.end) {
      const uint64_t key = r.varint();
      if ((key >> 3) == 3 && (key & 7) == 0) add_dummy_prefix_ = r.varint() != 0;
      else r.skip(uint32_t(key & 7));
    }
  }

  // ---- BPE ----
  static std::vector<std::string> split_code_points(const std::string& s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
      out.push_back(s.substr(i, n));
      i += n;
    }
    return out;
  }

  // Quadratic in the prompt length, which is fine for prompts; generation never encodes.
  void merge_pairs(std::vector<std::string>& symbols) const {
    for (;;) {
      size_t best = symbols.size();
      float best_score = 0.f;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        const auto it = ids_.find(symbols[i] + symbols[i + 1]);
        if (it == ids_.end()) continue;
        const float score = pieces_[size_t(it->second)].score;
        if (best == symbols.size() || score > best_score) best = i, best_score = score;
      }
      if (best == symbols.size()) return;
      symbols[best] += symbols[best + 1];
      symbols.erase(symbols.begin() + long(best) + 1);
    }
  }
};

}  // namespace bonsai_runner
