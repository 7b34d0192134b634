"""Anthropic Messages API dialect for npu-proxy (Claude Code)."""
