// tokenizer_cli TOKENIZER_JSON INPUTS_JSON: the runner's tokenizer alone, for tests/test_runner_tokenizer.py.
// INPUTS_JSON is a JSON list; a string is encoded and its ids decoded again, a list of ids is only decoded (ids as
// a model generates them: byte pieces cut mid-character, special tokens; "streamed" then holds TextStream's
// deltas over them, its flush() last), and {"words": TEXT} gives the words the
// pre-tokenizer cuts TEXT into (BpeTokenizer::words). Prints one JSON object:
//   {"load_ms": ..., "encode_ms": ..., "results": [{"ids": [...], "text": "..."} or {"words": [...]}, ...]}
// A refused tokenizer.json exits 2 with one line on stderr, as bonsai_runner does.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "bpe_tokenizer.h"

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The deltas of a TextStream over `ids`, then its flush().
std::vector<std::string> streamed(const bonsai_runner::BpeTokenizer& tokenizer, const std::vector<int32_t>& ids) {
  bonsai_runner::TextStream stream(tokenizer);
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(stream.push(id));
  out.push_back(stream.flush());
  return out;
}

nlohmann::json read_inputs(const char* path) {
  std::ifstream f(path, std::ios::binary);
  nlohmann::json inputs = nlohmann::json::parse(std::istreambuf_iterator<char>(f), {}, nullptr, false);
  if (!inputs.is_array()) throw std::runtime_error(std::string(path) + ": expected a JSON list");
  return inputs;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: tokenizer_cli TOKENIZER_JSON TEXTS_JSON\n");
    return 2;
  }
  try {
    const nlohmann::json inputs = read_inputs(argv[2]);
    const auto t0 = std::chrono::steady_clock::now();
    const bonsai_runner::BpeTokenizer tokenizer(argv[1]);
    const double load_ms = ms_since(t0);
    std::vector<std::vector<int32_t>> ids;
    const auto t1 = std::chrono::steady_clock::now();
    for (const auto& input : inputs) {
      if (input.is_object()) continue;  // words only
      ids.push_back(input.is_string() ? tokenizer.encode(input.get<std::string>()) : input.get<std::vector<int32_t>>());
    }
    const double encode_ms = ms_since(t1);
    nlohmann::json results = nlohmann::json::array();
    size_t next = 0;
    for (const auto& input : inputs) {
      if (input.is_object()) {
        results.push_back({{"words", tokenizer.words(input.at("words").get<std::string>())}});
        continue;
      }
      const auto& one = ids[next++];
      nlohmann::json result = {{"ids", one}, {"text", tokenizer.decode(one)}};
      if (!input.is_string()) result["streamed"] = streamed(tokenizer, one);
      results.push_back(std::move(result));
    }
    std::printf("%s\n", nlohmann::json{{"load_ms", load_ms}, {"encode_ms", encode_ms}, {"results", results}}
                            .dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_cli: %s\n", e.what());
    return 2;
  }
  return 0;
}
