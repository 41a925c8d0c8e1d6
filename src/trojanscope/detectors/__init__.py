"""Detectors: model-level scans (``detectors.model``) and input guards (``detectors.input``)."""
