"""Where a webhook may go: http(s) only, never the daemon itself, a private network or a
cloud's metadata service unless ``BRIEFD_WEBHOOK_ALLOW_PRIVATE=true``.

A webhook URL is chosen by whoever submits a job, and the daemon then makes a
request to it from inside its network: the classic server-side request forgery.
So a URL is refused at submission when its host is, or resolves to, a loopback,
private, link-local, shared (CGNAT), reserved or multicast address, and again
before every attempt (:func:`resolve_target`): a name that resolved to a public
address at submission may point at 127.0.0.1 an hour later (DNS rebinding), and
the attempt then connects to the very address checked, not to a fresh lookup.

The daemon's own API and the cloud metadata services are refused even with the
opt-in: posting a job's events back to the daemon or to 169.254.169.254 has no
use, and is the first thing an attacker tries.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

FIELD = "webhook.url"
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.com",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
"""AWS, GCP, Azure, OpenStack (169.254.169.254), ECS task metadata, EC2 over IPv6, Alibaba."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


class WebhookUrlError(ValueError):
    """A webhook URL refused; the message names the field and why, never the URL's secrets."""


@dataclass(frozen=True)
class Target:
    """A URL checked for one attempt: connect to ``address`` (as resolved and checked), send
    ``Host: host_header``, verify TLS for ``host``."""

    scheme: str
    host: str
    port: int
    address: str
    path: str
    host_header: str
    userinfo: tuple[str, str] | None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for TCP (raises OSError if none)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def redact_url(url: str) -> str:
    """``url`` fit to show: no user or password, each query value ``***``, no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    query = "&".join(f"{kv.partition('=')[0]}=***" for kv in parts.query.split("&") if kv)
    return f"{parts.scheme}://{host}{port}{parts.path}{'?' + query if query else ''}"


def _parse(url: str, field: str) -> SplitResult:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as err:
        raise WebhookUrlError(f"{field}: not a URL ({err})") from None
    if parts.scheme not in ("http", "https"):
        got = repr(parts.scheme) if parts.scheme else "none"
        raise WebhookUrlError(f"{field}: only http:// and https:// URLs (scheme: {got})")
    if not parts.hostname:
        raise WebhookUrlError(f"{field}: no host in {redact_url(url)}")
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a webhook must not connect to ``address`` (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if allow_private or (address.is_global and not address.is_multicast):
        return None
    for kind, test in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
    ):
        if test:
            return f"a {kind} address"
    return "not a public address"


def check_url(
    url: str,
    *,
    allow_private: bool,
    own: Sequence[tuple[str, int]] = (),
    resolver: Resolver = resolve,
    field: str = FIELD,
) -> Target:
    """The URL's :class:`Target` if a webhook may go there, else :class:`WebhookUrlError`.

    ``own``: the daemon's listening ``(address, port)`` pairs, refused always. The host
    is resolved (``resolver``) and *every* address must pass: a name with one private
    address among public ones is refused, since the connection could land on it.
    """
    parts = _parse(url, field)
    host = (parts.hostname or "").rstrip(".").lower()
    port = _port(parts)
    shown = redact_url(url)
    if host in METADATA_HOSTS:
        raise WebhookUrlError(f"{field}: {shown}: {host} is a cloud metadata service")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list(resolver(host, port))
        except OSError as err:
            why = str(err.strerror or err)
            raise WebhookUrlError(
                f"{field}: {shown}: host {host} does not resolve ({why})"
            ) from None
        if not addresses:
            raise WebhookUrlError(f"{field}: {shown}: host {host} does not resolve")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if _is_own(address, port, own):
            raise WebhookUrlError(f"{field}: {shown}: that is this daemon's own API")
        refused = refusal(address, allow_private=allow_private)
        if refused is not None:
            named = host if literal is not None else f"{host} resolves to {address}, which"
            raise WebhookUrlError(
                f"{field}: {shown}: {named} is {refused} "
                "(set BRIEFD_WEBHOOK_ALLOW_PRIVATE=true to allow private networks)"
            )
    userinfo = None
    if parts.username is not None:
        userinfo = (parts.username, parts.password or "")
    default_port = port == (443 if parts.scheme == "https" else 80)
    bracketed = f"[{host}]" if ":" in host else host
    return Target(
        scheme=parts.scheme,
        host=host,
        port=port,
        address=addresses[0],
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        host_header=bracketed if default_port else f"{bracketed}:{port}",
        userinfo=userinfo,
    )


def _is_own(address: IPAddress, port: int, own: Sequence[tuple[str, int]]) -> bool:
    """Whether ``address:port`` reaches one of the daemon's listening sockets (a socket on
    a loopback or wildcard address is reached by any loopback address)."""
    for own_host, own_port in own:
        if port != own_port:
            continue
        try:
            mine = ipaddress.ip_address(own_host.split("%")[0])
        except ValueError:
            continue
        if address == mine or (
            (mine.is_loopback or mine.is_unspecified) and (address.is_loopback or address == mine)
        ):
            return True
    return False
