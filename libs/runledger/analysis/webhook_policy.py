"""Where a webhook may send findings: the destination policy against server-side request forgery.

A tenant admin chooses a webhook's URL and reads back the status and the first bytes of
every answer, so an unchecked URL lets a tenant make the analysis service POST to the
deployment's own network (loopback ports such as ClickHouse's 8123, RFC 1918 networks,
the cloud metadata service on 169.254.169.254) and read part of the reply. The policy:

- URL: http or https, a host, no userinfo (`user:pass@` would put credentials in rows a
  tenant reads, and is how some parsers are confused about which host is meant).
- Address: every non-public range is forbidden (loopback, private, link-local, CGNAT,
  unique-local, multicast, unspecified, reserved/documentation), including the IPv6
  forms that embed an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96,
  6to4 2002::/16), unless RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS lists it or
  RUNLEDGER_WEBHOOK_ALLOW_PRIVATE_NETWORKS is set.

Pure logic (no I/O): the API applies it to a URL at registration, the dispatcher to
every address a hostname resolves to, right before it connects (services/analysis/webhooks.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_NETWORKS_VAR = "RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS"
ALLOW_PRIVATE_VAR = "RUNLEDGER_WEBHOOK_ALLOW_PRIVATE_NETWORKS"

# (network, what it is), most specific first where they nest. Explicit rather than
# ipaddress's is_private/is_global, whose answers changed between Python versions.
_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "unspecified"),  # "this network": 0.0.0.0 reaches the local host on Linux
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),  # cloud metadata services live here
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("192.0.2.0/24", "reserved"),  # documentation
        ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast (deprecated)
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),  # benchmarking
        ("198.51.100.0/24", "reserved"),  # documentation
        ("203.0.113.0/24", "reserved"),  # documentation
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the broadcast 255.255.255.255
    )
)
_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), kind)
    for net, kind in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/8", "reserved"),  # IPv4-compatible and other legacy forms (mapped ones are unwrapped first)
        ("64:ff9b:1::/48", "private"),  # local-use NAT64
        ("100::/64", "reserved"),  # discard-only
        ("2001:db8::/32", "reserved"),  # documentation
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "private"),  # site-local (deprecated)
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class DestinationRefused(Exception):
    """A webhook destination the policy forbids; its message is fit for the tenant to read."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64 or 6to4); None otherwise.

    Packets to these forms reach the embedded IPv4 host (mapped: the dual-stack socket
    itself; NAT64/6to4: a translator), so they are judged as that host."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def classify(address: IPAddress) -> str | None:
    """What kind of non-public address this is ("loopback", "private", ...); None when public."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return classify(inner)
    table: Iterable[tuple[IPNetwork, str]] = _V4 if isinstance(address, ipaddress.IPv4Address) else _V6
    for network, kind in table:
        if address in network:
            return kind
    return None


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or bare addresses) as networks; ValueError naming the first invalid one.

    Host bits are allowed ("10.1.2.3/16" means 10.1.0.0/16): an operator listing a
    receiver's network should not have to normalise it first."""
    networks: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{cidr!r} is not an IP network (CIDR): {exc}") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Which addresses webhooks may reach: every public one, plus what the operator allows."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allow_private_networks: bool = False

    @classmethod
    def of(
        cls, allowed_networks: Iterable[str] = (), allow_private_networks: bool = False
    ) -> DestinationPolicy:
        """The policy of the settings' values (CIDR strings, the bool)."""
        return cls(parse_networks(allowed_networks), allow_private_networks)

    def problem(self, address: IPAddress | str) -> str | None:
        """Why webhooks must not connect to `address` (a message for the tenant); None when allowed."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        kind = classify(ip)
        if kind is None or self.allow_private_networks:
            return None
        inner = embedded_ipv4(ip)
        if any(a in net for net in self.allowed_networks for a in (ip, inner) if a is not None):
            return None
        article = "an" if kind[0] in "aeiou" else "a"
        shown = f"{ip} ({inner})" if inner is not None else str(ip)  # the IPv4 host it stands for
        return (
            f"destination {shown} is {article} {kind} address; webhooks reach it only where the"
            f" operator allows it ({ALLOWED_NETWORKS_VAR} or {ALLOW_PRIVATE_VAR})"
        )

    def allows(self, address: IPAddress | str) -> bool:
        return self.problem(address) is None

    def check(self, address: IPAddress | str) -> None:
        """DestinationRefused unless webhooks may connect to `address`."""
        problem = self.problem(address)
        if problem is not None:
            raise DestinationRefused(problem)


def literal_ip(host: str) -> IPAddress | None:
    """The host as an IP address if it is one (brackets and an IPv6 zone tolerated); else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def url_problem(url: str, policy: DestinationPolicy) -> str | None:
    """Why a webhook must not have this URL, judged without DNS; None when it may.

    A hostname is judged later by what it resolves to: at registration when that is
    cheap, and always at delivery (DNS answers may change in between)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"url is not a valid URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return "url must be an http:// or https:// URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "url must not contain credentials (user:password@): authenticate by the signature"
    if not parts.hostname:
        return "url must name a host"
    ip = literal_ip(parts.hostname)
    if ip is not None:
        problem = policy.problem(ip)
        if problem is not None:
            return f"url: {problem}"
    return None
