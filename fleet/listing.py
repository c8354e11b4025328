"""``edge-fleet gateways``: the table of gateways, with the software version each one runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edge_agent.fleet.registry import GatewayRow


def gateway_table(rows: Sequence[GatewayRow], when: Callable[[int | None], str]) -> str:
    """``edge-fleet gateways``: one line per gateway, with the software version it runs."""
    out = [f"{'gateway':<20} {'site':<14} {'online':<6} {'software':<10} {'config':>6}  "
           f"{'last result':<22} {'last seen':<19} tags"]
    for g in rows:
        result = f"{g.result or '-'}" + (f" v{g.result_version}" if g.result_version else "")
        sw = (g.software.running if g.software else None) or "-"
        out.append(f"{g.id:<20} {g.site:<14} {'yes' if g.online else 'no':<6} {sw:<10} "
                   f"{g.config_version:>6}  {result:<22} {when(g.last_seen_ms):<19} "
                   f"{','.join(g.tags)}")
    out.append(f"{len(rows)} gateways")
    return "\n".join(out)
