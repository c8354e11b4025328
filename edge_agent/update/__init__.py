"""Software updates of the agent: staging a signed release, switching, the supervisor.

The supervisor and everything it imports (``journal``, ``releases``) use the standard library
only; ``stage`` verifies bundles with the product's verifier and runs inside the agent.
"""
