"""The package's layers, lowest first: a module imports only modules of its own layer or of a lower one, and the
import graph has no circles (tests/test_layers.py checks both, function-local imports included; docs/DESIGN.md
describes the flow). Nothing imports this module; it is the table the test and the docs read.
"""

LAYERS: dict[str, tuple[str, ...]] = {
    # shared vocabulary: errors, paths, the artifact contract (manifest, embedded metadata), native libraries
    "base": ("bonsai_export", "errors", "paths", "quiet", "options", "formats", "artifact", "metadata", "native",
             "layers"),
    # checkpoint -> canonical ternary form -> the export-ready model
    "model": ("config", "hf_configs", "bitnet", "ternary_groups", "gguf_reader", "byte_level", "tokenizer",
              "sentencepiece_json", "checkpoint_files", "checkpoint", "kernels", "ops", "dense", "ternary_layers",
              "model"),
    # model -> artifact folder, in named stages
    "export": ("export", "export.stages", "export.staging", "export.executorch", "export.onnx_nodes", "export.onnx",
               "export.gguf_vocab", "export.gguf"),
    # artifact (or checkpoint) -> logits and tokens
    "runtime": ("runners", "generate", "chat"),
    # everything that drives exporters and runners: checks, measurements, checkpoints made for tests and demos
    "tools": ("gates", "reports", "validate", "reference", "scoring", "evaluate", "eval_tasks.loader", "bench_report",
              "bench_kernels", "device_bench", "peers", "baselines", "bench_worker", "bench", "rst_text", "corpus", "train",
              "synthetic", "info", "artifact_sources"),
    # parse -> config -> one public function per subcommand
    "cli": ("cli", "cli.parser", "cli.commands", "__main__"),
}
