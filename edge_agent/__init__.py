"""edge-agent: polls field devices over Modbus and reports them over MQTT.

The import root of the whole product (gateway, drivers, codec, shared protocol, fleet): it
holds only the version, so importing any part of the product loads nothing else.
"""

__version__ = "0.1.0"
