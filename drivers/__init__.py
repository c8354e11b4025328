"""Field protocols: bus and device types, profiles shipped as data, Modbus, DL/T 645, simulators.

A protocol-neutral ``transport`` interface (one request at a time per bus), with each field
protocol in a room of its own (``modbus/``, ``dlt645/``). May import ``edge_agent.protocol``
only: the gateway's runtime drives the drivers, never the other way round.
"""
