"""Field protocols: Modbus transport, read planning, register decoding, profiles, simulators."""
