"""The client's address (framework-neutral: the Flask extension and the ASGI
middleware both use it): the peer, or the one the outermost trusted proxy saw in ``X-Forwarded-For`` (``RATEKEEPER_TRUSTED_PROXIES``); IPv6 grouped by
``RATEKEEPER_IPV6_PREFIX``; and allow/deny lists matched against it."""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Dict, List, Optional, Union


@functools.lru_cache(maxsize=4096)
def _group_ipv6(addr: str, prefix: int) -> str:
    try:
        ip = ipaddress.IPv6Address(addr.strip("[]").split("%", 1)[0])
    except ValueError:
        return addr
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if prefix >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, prefix), strict=False))


def client_ip_of(peer: str, forwarded_for: Optional[str], trusted_proxies: int) -> str:
    """The client's address as received (IPv6 not grouped): ``peer``, or
    with ``trusted_proxies`` = N > 0 the N-th entry from the right of
    ``forwarded_for`` (the ``X-Forwarded-For`` value), the address the
    outermost trusted proxy saw. Framework-neutral: WSGI and ASGI callers
    pass what their request holds."""
    if trusted_proxies > 0 and forwarded_for:
        hops = [h.strip() for h in forwarded_for.split(",")]
        # Each trusted proxy appended the address it received the request
        # from; the client is the one the outermost trusted proxy saw.
        if len(hops) >= trusted_proxies and hops[-trusted_proxies]:
            return hops[-trusted_proxies]
    return peer


def client_address_of(peer: str, forwarded_for: Optional[str], trusted_proxies: int, ipv6_prefix: int) -> str:
    """The client's address as a key: :func:`client_ip_of`, IPv6 grouped by
    ``ipv6_prefix`` (IPv4-mapped IPv6 as IPv4)."""
    addr = client_ip_of(peer, forwarded_for, trusted_proxies) if trusted_proxies > 0 else peer
    if ":" in addr:
        return _group_ipv6(addr, ipv6_prefix)
    return addr


def _client_address(environ: Dict[str, Any], trusted_proxies: int, ipv6_prefix: int) -> str:
    """:func:`client_address_of` of a WSGI environ."""
    addr = environ.get("REMOTE_ADDR") or ""
    if trusted_proxies > 0:  # (no extra call on the common path)
        addr = client_ip_of(addr, environ.get("HTTP_X_FORWARDED_FOR"), trusted_proxies)
    if ":" in addr:
        return _group_ipv6(addr, ipv6_prefix)
    return addr


def _client_ip(environ: Dict[str, Any], trusted_proxies: int) -> str:
    """:func:`client_ip_of` of a WSGI environ."""
    return client_ip_of(environ.get("REMOTE_ADDR") or "", environ.get("HTTP_X_FORWARDED_FOR"), trusted_proxies)


@functools.lru_cache(maxsize=4096)
def _ip_of(addr: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address, None]:
    """``addr`` as an IP address (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(addr.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class AccessList:
    """An allow or deny list: networks (CIDR, IPv4 or IPv6; a bare address
    is a /32 or /128) matched against the client address, and literal keys
    matched against the values of the request's key functions (e.g.
    ``"x-api-key:abc"`` for ``header("X-API-Key")``) and the client
    address. A string is split at commas and whitespace (for values from
    the environment)."""

    def __init__(self, entries: Any, what: str):
        nets: List[Any] = []
        keys: set = set()
        if entries is None:
            entries = []
        elif isinstance(entries, str):
            entries = [e for e in entries.replace(",", " ").split() if e]
        for e in entries:
            if isinstance(e, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                nets.append(e)
            elif isinstance(e, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                nets.append(ipaddress.ip_network(e))
            elif isinstance(e, bytes):
                keys.add(e)
            elif isinstance(e, str):
                try:
                    nets.append(ipaddress.ip_network(e.strip(), strict=False))
                except ValueError:
                    keys.add(e)
            else:
                raise TypeError(f"{what}: entries must be CIDR strings or keys, not {e!r}")
        self.networks = tuple(nets)
        self.keys = frozenset(keys)

    def __bool__(self) -> bool:
        return bool(self.networks or self.keys)

    def has_ip(self, ip: Any) -> bool:
        if ip is None:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)
