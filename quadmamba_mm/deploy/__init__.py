"""Deployment: whole models exported to ONNX with standard operators."""
