"""Benchmarks that measure ratios side by side in one run (`fedpoint bench ...`, `bench/*.py`).

Targets live here, not in timed tests: a loaded CI machine should not fail a test, and a
benchmark prints the measured ratio so a person can judge it.
"""
