"""Cython fast paths, byte-identical to the pure-Python references."""
