"""The data ingest: every gateway's batches stored once, deduplicated by (gateway, epoch, seq),
with gaps recorded (``consumer`` is the MQTT shell, ``intake`` the pure limits and decoding,
``store`` the SQL). Part of the operations centre: may import ``edge_agent.protocol``,
``edge_agent.codecs`` and the rest of ``edge_agent.fleet``; never the gateway.
"""
