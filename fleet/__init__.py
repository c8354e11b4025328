"""The operations centre: registry, signed bundles and rollouts, enrolment, the broker's files,
the data ingest and the operator's command line.

May import ``edge_agent.protocol`` and ``edge_agent.codecs`` only: never the gateway's runtime,
control plane, tools or drivers. Only this side talks to PostgreSQL.
"""
