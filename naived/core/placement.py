"""Which host trades which symbol in a cluster: rendezvous (highest random weight) hashing.

Every host computes the same answer from the same facts (the shared trading set and the hosts
seen alive), with no coordinator: a symbol's place is the alive host with the highest
`weight(symbol, host)`. Each host then acquires the free leases of the symbols placed on it and
hands off (stops, then releases) the ones it holds that are placed elsewhere. A host that joins
or leaves moves only the symbols whose highest weight it has or had (about 1/n of them), and
with many symbols every host gets close to an equal share.

The leases (naived/store/leases.py) decide who actually trades: placement only says who should
ask. A symbol placed on a host that is gone stays with whoever holds its lease until that lease
expires, and then goes to its next place.
"""

from __future__ import annotations

import hashlib

import msgspec


def weight(symbol: str, host: str) -> int:
    """A stable pseudo-random weight of (symbol, host): the same on every host and every run."""
    digest = hashlib.blake2b(f"{symbol}\0{host}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def place(symbol: str, hosts: set[str]) -> str:
    """The host `symbol` belongs on among `hosts` (not empty)."""
    return max(hosts, key=lambda host: (weight(symbol, host), host))


class Plan(msgspec.Struct, frozen=True):
    acquire: list[str]  # free (or expired) leases this host should take
    release: list[str]  # held by this host, but placed on another alive host or no longer traded


def plan(me: str, wanted: list[str], held_by: dict[str, str], alive: set[str]) -> Plan:
    """What host `me` does this round. `wanted`: the trading set; `held_by`: symbol -> holder of a
    live lease; `alive`: hosts seen within the lease time (`me` always counts)."""
    hosts = alive | {me}
    acquire = sorted(s for s in wanted if s not in held_by and place(s, hosts) == me)
    wanted_set = set(wanted)
    release = sorted(s for s, holder in held_by.items()
                     if holder == me and (s not in wanted_set or place(s, hosts) != me))
    return Plan(acquire, release)
