"""Offline model tooling: fetch the default weights, .pth -> ONNX -> TensorRT, parity, benchmarks."""
