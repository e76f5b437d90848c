// Generated from bonsai_export/{artifact,metadata}.py by `python -m bonsai_export.artifact_sources`; do not edit.
#pragma once

#include <cstdint>

namespace bonsai::artifact {

namespace folder {
inline constexpr int64_t kFormatVersion = 2;
inline constexpr char kManifest[] = "bonsai_manifest.json";
inline constexpr char kPteFile[] = "model.pte";
inline constexpr char kOnnxFile[] = "model.onnx";
inline constexpr char kOnnxDataFile[] = "model.onnx.data";
inline constexpr char kGenaiConfig[] = "genai_config.json";
inline constexpr char kOrtOpsLib[] = "libbonsai_ort_ops.so";
inline constexpr char kSeal[] = "manifest_sha256";
inline constexpr char kTypePte[] = "pte";
inline constexpr char kTypeOnnx[] = "onnx";
inline constexpr char kTypeGguf[] = "gguf";
inline constexpr char kTernaryOpCustom[] = "custom";
inline constexpr char kTernaryOpStock[] = "stock";
}  // namespace folder

namespace manifest {
inline constexpr char kArtifacts[] = "artifacts";
inline constexpr char kOptions[] = "options";
inline constexpr char kModel[] = "model";
inline constexpr char kSource[] = "source";
inline constexpr char kTokenizer[] = "tokenizer";
inline constexpr char kFiles[] = "files";
inline constexpr char kFormatVersion[] = "format_version";
inline constexpr char kBonsaiExportVersion[] = "bonsai_export_version";
}  // namespace manifest

namespace model {
inline constexpr char kNLayers[] = "n_layers";
inline constexpr char kDim[] = "dim";
inline constexpr char kVocabSize[] = "vocab_size";
inline constexpr char kMaxSeqLen[] = "max_seq_len";
inline constexpr char kBosId[] = "bos_id";
inline constexpr char kEosIds[] = "eos_ids";
inline constexpr char kNKvHeads[] = "n_kv_heads";
inline constexpr char kHeadDim[] = "head_dim";
inline constexpr char kTernaryWeights[] = "ternary_weights";
inline constexpr char kTernaryBytes[] = "ternary_bytes";
inline constexpr char kBitsPerTernaryWeight[] = "bits_per_ternary_weight";
inline constexpr char kHeadBytes[] = "head_bytes";
inline constexpr char kNote[] = "note";
inline constexpr char kTernaryFormat[] = "ternary_format";
inline constexpr char kEmbeddingFormat[] = "embedding_format";
inline constexpr char kHeadFormat[] = "head_format";
}  // namespace model

namespace entry {
inline constexpr char kType[] = "type";
inline constexpr char kFile[] = "file";
inline constexpr char kOpLibrary[] = "op_library";
inline constexpr char kTernaryOp[] = "ternary_op";
inline constexpr char kFiles[] = "files";
inline constexpr char kGenaiConfig[] = "genai_config";
inline constexpr char kBitsPerTernaryWeight[] = "bits_per_ternary_weight";
}  // namespace entry

namespace pte {
inline constexpr char kCallTokens[] = "get_max_seq_len";
inline constexpr char kMaxSeqLen[] = "get_max_context_len";
inline constexpr char kVocabSize[] = "get_vocab_size";
inline constexpr char kNLayers[] = "get_n_layers";
inline constexpr char kBosId[] = "get_bos_id";
inline constexpr char kEosIds[] = "get_eos_ids";
inline constexpr char kOptions[] = "get_bonsai_export_options";
inline constexpr char kFormatVersion[] = "get_bonsai_format_version";
inline constexpr char kUseKvCache[] = "use_kv_cache";
inline constexpr char kEnableDynamicShape[] = "enable_dynamic_shape";
}  // namespace pte

}  // namespace bonsai::artifact
