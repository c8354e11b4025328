"""The running agent: schedulers per bus, batcher, store (spool), uplink, health.

The data path, one direction: readings -> batcher -> one encode -> the store -> the uplink,
which only takes, publishes and acknowledges. May import ``edge_agent.protocol``,
``edge_agent.drivers``, ``edge_agent.codecs`` and ``edge_agent.config``; never the control
plane, the tools or the fleet.
"""
