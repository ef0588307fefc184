"""Flowboard benchmarks: seeded, separate from the tests."""
