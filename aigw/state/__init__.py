"""Shared state: rate limits, admission (queue and slots), sessions; memory and Redis."""
