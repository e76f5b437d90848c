// bonsai_runner: greedy generation from a bonsai-export .pte with nothing but the ExecuTorch runtime
// (libexecutorch.so, the XNNPACK backend) and our op library: no Python, no libtorch. The latency harness on
// a phone (`bonsai-export bench --device adb` pushes and runs it) and the proof that the artifact needs nothing
// else.
//
//   bonsai_runner MODEL_DIR|MODEL.pte (--prompt TEXT | --tokens 1,415,2936) [--max-new-tokens 32]
//                 [--threads N] [--mmap] [--json FILE]
// --prompt is encoded with the folder's tokenizer.json (docs/TOKENIZER.md: its post-processor adds the BOS);
// --tokens are used as given. stdout: the generated token ids, comma-separated, on one line; then one JSON line of
// timings (also written to --json FILE; tokenizer_load_s apart from load_s), with the generated text when the
// folder has a tokenizer.json.
//
// Memory: decode streams every weight once per token (~150 MB for Bonsai-500M), so page walks matter: by default
// the program is read into anonymous memory advised for transparent huge pages. On a 4 KiB-page file mapping
// (--mmap, ExecuTorch's Mmap load mode) decode ran ~25% slower on the x86 machines we measured; where the kernel
// has no THP the advice is ignored and nothing else changes. The method's planned buffers (KV caches sized for
// max_seq_len, activations sized for the longest call) stay in 4 KiB pages: only the pages a run writes become
// resident: a 128 + 128-token run of Bonsai-500M peaks at the program + ~59 MiB.
#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../executorch/et_threadpool.h"
#include "../executorch/et_threads.h"
#include "artifact_keys.h"
#include "bpe_tokenizer.h"

using executorch::extension::Module;
using executorch::extension::make_tensor_ptr;
using executorch::runtime::EValue;

namespace {

struct Options {
  std::string model;      // the .pte
  std::string tokenizer;  // tokenizer.json beside it ("" when absent)
  std::string prompt_text;
  std::vector<int64_t> prompt;
  std::string json_path;
  int64_t max_new_tokens = 32;
  int64_t threads = 0;  // 0: the runtime's default
  int64_t warmup = 0;   // untimed runs of the prompt before the timed one
  bool mmap = false;
};

constexpr const char* kUsage =
    "usage: bonsai_runner MODEL_DIR|MODEL.pte (--prompt TEXT | --tokens ID,ID,...) [--max-new-tokens N] "
    "[--threads N] [--warmup N] [--mmap] [--json FILE]";

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "bonsai_runner: %s\n", message.c_str());
  std::exit(2);
}

std::vector<int64_t> parse_ids(const char* text) {
  std::vector<int64_t> ids;
  for (const char* p = text; *p;) {
    char* end = nullptr;
    const long long v = std::strtoll(p, &end, 10);
    if (end == p || v < 0) die(std::string("--tokens: expected comma-separated ids, got '") + text + "'");
    ids.push_back(v);
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') die(std::string("--tokens: unexpected '") + *end + "'");
  }
  return ids;
}

int64_t parse_count(const char* flag, const char* text, int64_t min) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end || v < min) die(std::string(flag) + ": expected an integer >= " + std::to_string(min));
  return v;
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Options parse(int argc, char** argv) {
  Options o;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--tokens" && has_value) o.prompt = parse_ids(argv[++i]);
    else if (a == "--prompt" && has_value) o.prompt_text = argv[++i];
    else if (a == "--max-new-tokens" && has_value) o.max_new_tokens = parse_count(a.c_str(), argv[++i], 1);
    else if (a == "--threads" && has_value) o.threads = parse_count(a.c_str(), argv[++i], 0);
    else if (a == "--warmup" && has_value) o.warmup = parse_count(a.c_str(), argv[++i], 0);
    else if (a == "--json" && has_value) o.json_path = argv[++i];
    else if (a == "--mmap") o.mmap = true;
    else if (a[0] != '-' && path.empty()) path = a;
    else die(kUsage);
  }
  if (path.empty() || o.prompt.empty() == o.prompt_text.empty()) die(kUsage);
  const std::string dir = is_dir(path) ? path : path.substr(0, path.find_last_of('/') + 1);
  o.model = is_dir(path) ? path + "/model.pte" : path;
  if (!is_file(o.model)) die(o.model + ": no such file (expected a bonsai-export folder or a .pte)");
  const std::string tokenizer = (dir.empty() ? "." : dir) + "/tokenizer.json";
  o.tokenizer = is_file(tokenizer) ? tokenizer : "";
  if (!o.prompt_text.empty() && o.tokenizer.empty())
    die("--prompt needs " + tokenizer + " (an artifact exported before it had one: re-export it); pass --tokens "
        "instead");
  return o;
}

// Peak and current resident memory in MiB from /proc/self/status (Linux and Android).
double status_mib(const char* key) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  double kib = -1;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, key, std::strlen(key)) == 0) kib = std::atof(line + std::strlen(key));
  }
  std::fclose(f);
  return kib < 0 ? -1 : kib / 1024.0;
}

// A JSON string literal of UTF-8 text (the decoder's output always is: invalid byte runs become U+FFFD there).
std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// The prompt's ids: the tokenizer's post-processor adds the BOS (docs/TOKENIZER.md), so none is added here.
std::vector<int64_t> encode_prompt(const bonsai_runner::BpeTokenizer& tokenizer, const std::string& text) {
  try {
    const std::vector<int32_t> ids = tokenizer.encode(text);
    return {ids.begin(), ids.end()};
  } catch (const bonsai_runner::TokenizerError& e) {
    die(std::string("--prompt: ") + e.what());
  }
}

std::string json_ids(const std::vector<int64_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out + "]";
}

// Anonymous memory, 2 MiB-aligned, optionally advised for transparent huge pages (best effort).
class AnonBuffer {
 public:
  AnonBuffer(size_t size, bool huge_pages) : size_(size ? size : 1) {
    constexpr size_t kHuge = size_t(2) << 20;
    mapped_ = (size_ + 2 * kHuge - 1) / kHuge * kHuge;
    base_ = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base_ == MAP_FAILED) die("cannot allocate " + std::to_string(size_) + " bytes");
    data_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base_) + kHuge - 1) / kHuge * kHuge);
    if (huge_pages) madvise(data_, mapped_ - size_t(data_ - static_cast<uint8_t*>(base_)), MADV_HUGEPAGE);
  }
  ~AnonBuffer() { munmap(base_, mapped_); }
  AnonBuffer(const AnonBuffer&) = delete;
  AnonBuffer& operator=(const AnonBuffer&) = delete;
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_, mapped_;
  void* base_;
  uint8_t* data_;
};

std::unique_ptr<AnonBuffer> read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) die("cannot open " + path);
  std::fseek(f, 0, SEEK_END);
  const long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  auto buf = std::make_unique<AnonBuffer>(size_t(size > 0 ? size : 0), /*huge_pages=*/true);
  const bool ok = size > 0 && std::fread(buf->data(), 1, size_t(size), f) == size_t(size);
  std::fclose(f);
  if (!ok) die("cannot read " + path);
  return buf;
}

// The forward method's planned buffers (KV caches, activations).
struct PlannedMemory {
  std::vector<std::unique_ptr<AnonBuffer>> buffers;
  std::vector<executorch::runtime::Span<uint8_t>> spans;
  std::unique_ptr<executorch::runtime::HierarchicalAllocator> allocator;
};

int64_t constant(Module& m, const char* method) {
  auto r = m.execute(method);
  if (!r.ok() || r->empty()) die(std::string("missing metadata method ") + method + " (not a bonsai-export .pte?)");
  return r->at(0).toInt();
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One forward call over tokens [begin, begin + n) at position pos + begin; returns the last position's logits,
// which live in the method's planned memory until the next call.
const float* forward(Module& m, const std::vector<int64_t>& tokens, size_t begin, size_t n, int64_t pos,
                     int64_t vocab) {
  auto tok = make_tensor_ptr({1, int32_t(n)}, std::vector<int64_t>(tokens.begin() + begin, tokens.begin() + begin + n));
  auto in_pos = make_tensor_ptr({1}, std::vector<int64_t>{pos + int64_t(begin)});
  auto out = m.forward({EValue(tok), EValue(in_pos)});
  if (!out.ok()) die("forward failed (see the log above)");
  const auto& logits = out->at(0).toTensor();
  return logits.const_data_ptr<float>() + (logits.numel() - vocab);
}

// Forward calls of at most `call_tokens` tokens each, then argmax of the last position.
int64_t step(Module& m, const std::vector<int64_t>& tokens, int64_t pos, int64_t vocab, int64_t call_tokens) {
  size_t begin = 0;
  for (; tokens.size() - begin > size_t(call_tokens); begin += size_t(call_tokens))
    forward(m, tokens, begin, size_t(call_tokens), pos, vocab);
  const float* last = forward(m, tokens, begin, tokens.size() - begin, pos, vocab);
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v) best = last[v] > last[best] ? v : best;
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  std::unique_ptr<bonsai_runner::BpeTokenizer> tokenizer;
  const double t_tokenizer = now_s();
  try {
    if (!o.tokenizer.empty()) tokenizer = std::make_unique<bonsai_runner::BpeTokenizer>(o.tokenizer);
  } catch (const std::exception& e) {  // TokenizerError names the part; bad_alloc and the like end here too
    die(e.what());
  }
  const double tokenizer_load_s = now_s() - t_tokenizer;
  if (!o.prompt_text.empty()) o.prompt = encode_prompt(*tokenizer, o.prompt_text);
  if (o.prompt.empty()) die("--prompt: the tokenizer gives no ids for it");
  // Our ops run on the op library's own pool of --threads threads; ExecuTorch's (XNNPACK's small elementwise ops,
  // which take the pool when the program loads) stays at one thread, so no second pool's workers wake for them
  // and compete with ours for the cores (et_parallel.cpp).
  if (o.threads > 0) {
    executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(1);
    bonsai_et_set_threads(int32_t(o.threads));
  }
  const double t0 = now_s();
  // Declared before the Module, which refers to them until it is destroyed.
  std::unique_ptr<AnonBuffer> program;
  PlannedMemory planned;
  std::unique_ptr<Module> module;
  if (o.mmap) {
    module = std::make_unique<Module>(o.model, Module::LoadMode::Mmap);
  } else {
    program = read_file(o.model);
    module = std::make_unique<Module>(
        std::make_unique<executorch::extension::BufferDataLoader>(program->data(), program->size()));
  }
  Module& m = *module;
  executorch::runtime::HierarchicalAllocator* planned_memory = nullptr;
  if (!o.mmap) {
    const auto meta = m.method_meta("forward");
    if (!meta.ok()) die("cannot load " + o.model + " (not an ExecuTorch program, or truncated)");
    for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
      const auto size = meta->memory_planned_buffer_size(i);
      if (!size.ok()) die("cannot load " + o.model);
      planned.buffers.push_back(std::make_unique<AnonBuffer>(size_t(*size), /*huge_pages=*/false));
      planned.spans.emplace_back(planned.buffers.back()->data(), size_t(*size));
    }
    planned.allocator = std::make_unique<executorch::runtime::HierarchicalAllocator>(
        executorch::runtime::Span<executorch::runtime::Span<uint8_t>>(planned.spans.data(), planned.spans.size()));
    planned_memory = planned.allocator.get();
  }
  if (m.load_method("forward", planned_memory) != executorch::runtime::Error::Ok) die("cannot load " + o.model);
  namespace pte = bonsai::artifact::pte;
  // format 1 had no version method: say what to do rather than which method is missing
  if (!m.execute(pte::kFormatVersion).ok())
    die(o.model + ": no artifact format version (a bonsai-export .pte older than format " +
        std::to_string(bonsai::artifact::folder::kFormatVersion) + ", or not one); re-export it");
  const int64_t format = constant(m, pte::kFormatVersion);
  if (format != bonsai::artifact::folder::kFormatVersion)
    die(o.model + ": artifact format " + std::to_string(format) + ", this runner reads " +
        std::to_string(bonsai::artifact::folder::kFormatVersion) + "; re-export it");
  // max_seq_len: the context (KV cache positions); call_tokens: the most tokens one forward call takes.
  const int64_t max_seq_len = constant(m, pte::kMaxSeqLen), call_tokens = constant(m, pte::kCallTokens);
  const int64_t vocab = constant(m, pte::kVocabSize);
  if (call_tokens < 1 || max_seq_len < 1 || vocab < 1)
    die(o.model + ": bad metadata (" + pte::kCallTokens + " " + std::to_string(call_tokens) + "); re-export it");
  const auto eos = m.execute(pte::kEosIds);
  // a model may have more logits than its tokenizer has ids (Qwen pads its vocabulary), never fewer
  if (tokenizer && int64_t(tokenizer->id_count()) > vocab)
    die(o.tokenizer + ": " + std::to_string(tokenizer->id_count()) + " ids, the model has only " +
        std::to_string(vocab) + " logits (tokenizer from another model?)");
  for (int64_t id : o.prompt)
    if (id >= vocab)
      die((o.prompt_text.empty() ? "--tokens: id " : "--prompt: id ") + std::to_string(id) + " >= vocab size " +
          std::to_string(vocab));
  if (int64_t(o.prompt.size()) >= max_seq_len) die("prompt does not fit max_seq_len " + std::to_string(max_seq_len));
  // A benchmark's warm-up, as the bench gives every other backend: a fresh process's first call also faults in
  // the planned activation memory. The timed prefill rewrites the same cache positions, so nothing carries over.
  for (int64_t i = 0; i < o.warmup; ++i) step(m, o.prompt, 0, vocab, call_tokens);
  const double t1 = now_s();
  const double rss_loaded = status_mib("VmRSS:");
  int64_t token = step(m, o.prompt, 0, vocab, call_tokens);
  const double t2 = now_s();
  std::vector<int64_t> generated;
  for (int64_t pos = int64_t(o.prompt.size());; ++pos) {
    bool is_eos = false;
    for (const auto& e : *eos) is_eos |= e.toInt() == token;
    if (is_eos) break;
    generated.push_back(token);
    if (int64_t(generated.size()) >= o.max_new_tokens || pos >= max_seq_len) break;
    token = step(m, {token}, pos, vocab, call_tokens);
  }
  const double t3 = now_s();
  for (size_t i = 0; i < generated.size(); ++i) std::printf("%s%lld", i ? "," : "", (long long)generated[i]);
  const double decode_steps = double(generated.size()) - 1;
  char timings[512];
  std::snprintf(timings, sizeof timings,
                "{\"load_s\": %.6f, \"prompt_tokens\": %zu, \"generated_tokens\": %zu, \"prefill_tps\": %.3f, "
                "\"decode_tps\": %.3f, \"ttft_s\": %.6f, \"threads\": %lld, \"rss_loaded_mib\": %.1f, "
                "\"peak_rss_mib\": %.1f, \"program_bytes\": %zu, \"tokenizer_load_s\": %.6f",
                t1 - t0, o.prompt.size(), generated.size(), o.prompt.size() / (t2 - t1),
                decode_steps > 0 ? decode_steps / (t3 - t2) : 0.0, t2 - t1, (long long)o.threads, rss_loaded,
                status_mib("VmHWM:"), program ? program->size() : size_t(0), tokenizer_load_s);
  std::string json = std::string(timings) + ", \"prompt_ids\": " + json_ids(o.prompt) + ", \"generated_ids\": " +
                     json_ids(generated);
  if (tokenizer) json += ", \"text\": " + json_string(tokenizer->decode({generated.begin(), generated.end()}));
  json += "}";
  std::printf("\n%s\n", json.c_str());
  if (!o.json_path.empty()) {
    FILE* f = std::fopen(o.json_path.c_str(), "w");
    if (!f || std::fprintf(f, "%s\n", json.c_str()) < 0 || std::fclose(f) != 0) die("cannot write " + o.json_path);
  }
  return 0;
}
