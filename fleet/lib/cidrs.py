"""Address allow-lists from the environment (e.g. FLEET_METRICS_ALLOW=10.0.0.0/8,127.0.0.1)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from fleet.lib.env import ConfigError, env_list

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def env_cidrs(name: str, environ: Mapping[str, str] | None = None) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks; a wrong entry stops start-up naming it."""
    networks = []
    for entry in env_list(name, [], environ):
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ConfigError(
                f"{name} entry {entry!r} is not an address or network ({exc}); use e.g. 10.0.0.0/8 or 192.0.2.7"
            ) from None
    return tuple(networks)


def address_allowed(address: str | None, networks: Sequence[Network]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)
