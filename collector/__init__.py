"""Pulling and storing training metrics; imports nothing from Kubernetes or the web stack."""
