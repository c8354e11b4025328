"""Cython fast paths, byte-identical to the pure-Python references.

``_codec.pyx`` is the batch codec of ``codecs/reference.py``, proven identical by property
tests over both. May import ``edge_agent.protocol`` only (its error type); ``codecs`` loads it.
"""
