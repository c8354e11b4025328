"""Device simulators: value models, pymodbus servers on socat PTYs and TCP, fault control.

``run_site`` serves every device of a site; ``sim_control`` / ``sim_control_sync`` talk to
the control socket (see ``control.py`` for the requests). The ``edge-agent simulate`` command
that loads a site config around them is ``edge_agent.tools.simulate``. May import
``edge_agent.protocol`` and the rest of ``edge_agent.drivers``; never the gateway runtime.
"""

from edge_agent.drivers.sim.control import sim_control, sim_control_sync
from edge_agent.drivers.sim.runner import build_site, run_site

__all__ = ["build_site", "run_site", "sim_control", "sim_control_sync"]
