"""Deployment helpers: the local multi-process stack and the container health check."""
