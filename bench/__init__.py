"""Benchmarks: the serving stack against its floor and its seed, and the index at 1M items.

``python -m bench`` runs everything and writes bench/results/; see bench/README.md.
"""
