"""The gateway's control plane: signed desired state from the fleet, verified and applied.

``plane`` is the journalled state machine (verify -> validate -> dry-run -> switch -> health
gate -> commit or revert); ``gateway`` is the process that runs the agent under it;
``truststore`` keeps the pinned root and version floors on disk. May import the runtime, the
config, the drivers, the codecs and the protocol; never the tools or the fleet.
"""
