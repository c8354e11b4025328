"""edge-agent: polls field devices over Modbus and reports them over MQTT."""

__version__ = "0.1.0"
