"""Capture service: samples inference events into SageMaker JSON lines in the object store."""
