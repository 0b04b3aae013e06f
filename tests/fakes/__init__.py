"""Fake servers of third-party services, real HTTP on 127.0.0.1, for the source tests."""
