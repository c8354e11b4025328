"""Modbus RTU and TCP: the pymodbus transport, the read planner, register decoding, line timing
and the bus scan.

Pure cores (planner, decode, timing, scan) with the I/O in ``transport``. May import
``edge_agent.protocol`` and the rest of ``edge_agent.drivers``; never the gateway runtime.
"""
