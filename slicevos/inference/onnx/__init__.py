"""ONNX export of the networks (``slicevos-export``) and onnxruntime as a CPU backend of the
reference stage. Needs the ``onnx`` extra (onnx, onnxscript, onnxruntime)."""
