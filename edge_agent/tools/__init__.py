"""The installer's and developer's commands: scan, read/write, doctor, service, enrol, tail,
check-config, simulate and the demo (with its private broker and process helpers).

Each is a thin shell over the runtime, control plane and drivers. May import any gateway room;
never the fleet.
"""
