"""The site config: the operator's TOML file read into frozen values.

``loader`` reads and validates a file (every problem at once, each naming file, key, value and
expectation); ``model`` holds the parsed types. May import ``edge_agent.protocol`` and
``edge_agent.drivers`` (bus, device and profile types); nothing else of the gateway.
"""
