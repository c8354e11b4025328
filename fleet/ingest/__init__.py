"""The data ingest: every gateway's batches stored once, deduplicated by (gateway, epoch, seq),
with gaps recorded (``consumer`` is the MQTT shell, ``store`` the SQL).
"""
