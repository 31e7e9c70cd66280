"""Plumbing both services share: logging, request ids, access lines, metrics, error bodies."""
