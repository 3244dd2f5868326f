"""Inference service: FastAPI in front of the classifier; publishes one event per request."""
