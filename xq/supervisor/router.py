"""Router: the supervisor's main connection on a Redis Cluster, one raw connection per master.

A CLAIM or COMPLETE needs every key in one slot, so on a Cluster ClaimPipeline sends each claim group's
commands (a group: queues next to each other in the supervisor's order whose names hash to one slot; in
practice one queue) to the master serving that slot, through the Broker that Broker.at() gives for it.
One step is one write per master; the replies are read back in the order of the whole step (the order
deque names the node of each reply expected), so ClaimPipeline's pending entries stay as on one Redis.

The idle wait cannot span slots either (BZPOPMIN is a multi-key command): each group has a wait
connection of its own on its master (waiter()), a Broker sharing that master's client.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from ..broker import Broker


class Router:
    """Owns: the order of the replies expected across the masters' main connections, the groups' wait
    connections."""

    def __init__(self, broker: Broker, names: Sequence[str]):
        self.broker = broker               # the Cluster's Broker
        self.names = list(names)           # group -> the name of one of its queues (its slot)
        self.order: deque[Broker] = deque()  # the node Broker of each reply expected, in send order
        self.waiters: dict[int, Broker] = {}
        self.fds: list[int] = []           # the sockets of the masters with replies due, as of the last send

    def send(self, parts: Sequence[tuple[int, bytes, int]]) -> None:
        """Send (group, packed commands, how many replies) parts: one write per master, in part order."""
        by_node: dict[Broker, list[bytes]] = {}
        order = []
        for g, data, n in parts:
            b = self.broker.at(self.names[g])
            by_node.setdefault(b, []).append(data)
            order += [b] * n
        for b, data in by_node.items():
            b.send_packed(b"".join(data) if len(data) > 1 else data[0])
        self.order.extend(order)
        self.fds = list({b.main_fileno() for b in set(self.order)})

    def reply_ready(self) -> bool:
        return bool(self.order) and self.order[0].reply_ready()

    def read_reply(self):
        """The next reply of the step's order, from its master's connection (errors as values)."""
        return self.order.popleft().read_reply()

    def waiter(self, g: int) -> Broker:
        """A Broker with a wait connection of its own on the master serving group g's slot now."""
        node = self.broker.at(self.names[g])
        w = self.waiters.get(g)
        if w is None or w.client is not node.client:
            if w is not None:
                w.reset()
            w = Broker(node.url, client=node.client, socket_timeout=node.socket_timeout)
            w._owner = self.broker  # its failure marks the slot map stale, as a node's does
            self.waiters[g] = w
        return w

    def reset(self) -> None:
        """After an outage: the replies expected are lost, every wait connection is dropped (the masters'
        main connections are dropped by Broker.reset)."""
        self.order.clear()
        self.fds = []
        for w in self.waiters.values():
            w.reset()
