"""What the gateway and the operations centre share: the contract between them.

Errors, the clock, topics and identity rules, readings, the broker URL, back-off, canonical
bytes, keys, bundle format and its pure verifier, the trusted state, strict intake helpers.
Imports nothing else of the product, so both sides can depend on it.
"""
