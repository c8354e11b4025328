"""The gateway's control plane: signed desired state from the fleet, verified and applied.

``journal`` is the pure state machine (stages, what is committed and on trial, what a restart
does); ``plane`` drives it (verify -> validate -> dry-run -> switch -> health gate -> commit or
revert) with deadlines; ``gateway`` is the process that runs the agent under it;
``truststore`` keeps the pinned root and version floors on disk. May import the runtime, the
config, the drivers, the codecs and the protocol; never the tools or the fleet.
"""
