"""bonsai-export: ternary-weight Llama models (deepgrove/Bonsai) to ExecuTorch and ONNX phone artifacts."""

__version__ = "0.1.0"
