"""Deterministic simulated backend for npu-proxy: tests and clients without hardware."""
