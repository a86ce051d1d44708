"""Offline means offline: with ``$PYIQA_MACLIP_OFFLINE`` set, the command line opens no network connection.

This package's own downloads already refuse in offline mode; pyiqa's other metrics fetch their
weights themselves (``torch.hub`` from GitHub or Hugging Face). An audit hook (PEP 578) sees every
name lookup and connection the process makes and refuses those that would leave this machine,
before any packet is sent. Connections on this machine stay allowed: accelerate's processes meet
over the loopback interface, and local mirrors (``file://`` or ``http://127.0.0.1``) keep working.
"""
from __future__ import annotations

import ipaddress
import sys

from ..errors import UserError
from ..names import OFFLINE_ENV

__all__ = ['NetworkForbidden', 'leaves_this_machine', 'forbid_network']

_LOCAL_NAMES = frozenset({'localhost', 'localhost.localdomain', 'ip6-localhost', 'ip6-loopback'})


class NetworkForbidden(UserError, ConnectionRefusedError):
    """A connection refused because ``$PYIQA_MACLIP_OFFLINE`` is set."""


def _is_local_host(host) -> bool:
    if host is None or host == '':
        return True  # a wildcard lookup: binding a local socket
    if isinstance(host, bytes):
        host = host.decode('ascii', 'replace')
    host = str(host).strip('[]').lower()
    if host in _LOCAL_NAMES or host.endswith('.localhost'):
        return True
    try:
        address = ipaddress.ip_address(host.split('%')[0])
    except ValueError:
        return False  # a name to be resolved by a server elsewhere
    return address.is_loopback or address.is_unspecified


def leaves_this_machine(event: str, args: tuple) -> str | None:
    """The host an audited socket event would reach beyond this machine, or None."""
    if event == 'socket.getaddrinfo':
        host = args[0]
    elif event in ('socket.connect', 'socket.sendto'):
        address = args[1] if event == 'socket.connect' else args[-1]
        if not isinstance(address, tuple):  # a Unix socket's path, a netlink pair: never the network
            return None
        host = address[0]
    else:
        return None
    return None if _is_local_host(host) else str(host)


def forbid_network() -> None:
    """From now on, a lookup or connection of this process that would leave the machine raises
    :class:`NetworkForbidden` (an ``OSError`` the command line prints as one line)."""
    def hook(event: str, args: tuple) -> None:
        if event.startswith('socket.') and (host := leaves_this_machine(event, args)) is not None:
            raise NetworkForbidden(f'{OFFLINE_ENV} is set, so nothing is downloaded and no connection to {host} is '
                                   'opened; put the files the metric needs in place where there is internet, or unset '
                                   f'{OFFLINE_ENV}')

    sys.addaudithook(hook)

