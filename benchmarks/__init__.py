"""Benchmarks: need both the torch side (export) and the serving side (client)."""
