"""Inference runtime: pre-processing, runners (one per backend) and post-processing."""
