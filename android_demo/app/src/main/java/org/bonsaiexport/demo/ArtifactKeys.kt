// Generated from bonsai_export/{artifact,metadata}.py by `python -m bonsai_export.artifact_sources`; do not edit.
package org.bonsaiexport.demo

/** The artifact contract's names (bonsai_export/artifact.py, metadata.py), as the app reads them. */
object ArtifactKeys {
    object Folder {
        const val FORMAT_VERSION = 2
        const val MANIFEST = "bonsai_manifest.json"
        const val PTE_FILE = "model.pte"
        const val ONNX_FILE = "model.onnx"
        const val ONNX_DATA_FILE = "model.onnx.data"
        const val GENAI_CONFIG = "genai_config.json"
        const val ORT_OPS_LIB = "libbonsai_ort_ops.so"
        const val SEAL = "manifest_sha256"
        const val TYPE_PTE = "pte"
        const val TYPE_ONNX = "onnx"
        const val TYPE_GGUF = "gguf"
        const val TERNARY_OP_CUSTOM = "custom"
        const val TERNARY_OP_STOCK = "stock"
    }
    object Manifest {
        const val ARTIFACTS = "artifacts"
        const val OPTIONS = "options"
        const val MODEL = "model"
        const val SOURCE = "source"
        const val TOKENIZER = "tokenizer"
        const val FILES = "files"
        const val FORMAT_VERSION = "format_version"
        const val BONSAI_EXPORT_VERSION = "bonsai_export_version"
    }
    object Model {
        const val N_LAYERS = "n_layers"
        const val DIM = "dim"
        const val VOCAB_SIZE = "vocab_size"
        const val MAX_SEQ_LEN = "max_seq_len"
        const val BOS_ID = "bos_id"
        const val EOS_IDS = "eos_ids"
        const val N_KV_HEADS = "n_kv_heads"
        const val HEAD_DIM = "head_dim"
        const val TERNARY_WEIGHTS = "ternary_weights"
        const val TERNARY_BYTES = "ternary_bytes"
        const val BITS_PER_TERNARY_WEIGHT = "bits_per_ternary_weight"
        const val HEAD_BYTES = "head_bytes"
        const val NOTE = "note"
        const val TERNARY_FORMAT = "ternary_format"
        const val EMBEDDING_FORMAT = "embedding_format"
        const val HEAD_FORMAT = "head_format"
    }
    object Entry {
        const val TYPE = "type"
        const val FILE = "file"
        const val OP_LIBRARY = "op_library"
        const val TERNARY_OP = "ternary_op"
        const val FILES = "files"
        const val GENAI_CONFIG = "genai_config"
        const val BITS_PER_TERNARY_WEIGHT = "bits_per_ternary_weight"
    }
    object Pte {
        const val CALL_TOKENS = "get_max_seq_len"
        const val MAX_SEQ_LEN = "get_max_context_len"
        const val VOCAB_SIZE = "get_vocab_size"
        const val N_LAYERS = "get_n_layers"
        const val BOS_ID = "get_bos_id"
        const val EOS_IDS = "get_eos_ids"
        const val OPTIONS = "get_bonsai_export_options"
        const val FORMAT_VERSION = "get_bonsai_format_version"
        const val USE_KV_CACHE = "use_kv_cache"
        const val ENABLE_DYNAMIC_SHAPE = "enable_dynamic_shape"
    }
}
