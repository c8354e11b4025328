"""DL/T 645-2007 household energy meters: frame codec, BCD formats, data identifiers, read
planner, reply decoding, wire timing, the serial transport and the address search.

Pure cores (``frame``, ``bcd``, ``identifiers``, ``meter``, ``planner``, ``timing``,
``search``) with the I/O in ``transport``. May import ``edge_agent.protocol`` and the rest
of ``edge_agent.drivers``; never the gateway runtime.
"""
