"""Closed-form queueing results: M/M/1 and M/M/c (Erlang C). The simulator is checked against
them (tests/runner/test_cost_simulator.py), and the lab's notebook uses them to show why a
fleet at 95% utilisation has long queues.
"""

from __future__ import annotations

import math


def erlang_c(servers: int, offered_load: float) -> float:
    """P(an arrival waits) in an M/M/c queue with `servers` servers and offered load
    a = arrival rate / service rate (in Erlangs); requires a < servers.

    Computed through the Erlang B recursion, B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1)),
    then C = c B / (c - a (1 - B)), which stays stable for thousands of servers where the
    factorials of the textbook formula overflow."""
    if servers < 1:
        raise ValueError("need at least one server")
    if not 0 <= offered_load < servers:
        raise ValueError("the offered load must be below the number of servers (a stable queue)")
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return servers * blocking / (servers - offered_load * (1 - blocking))


def mmc_mean_wait(*, arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean time in queue (before service starts) of an M/M/c queue: C(c, a) / (c mu - lambda)."""
    load = arrival_rate / service_rate
    return erlang_c(servers, load) / (servers * service_rate - arrival_rate)


def mm1_mean_wait(*, arrival_rate: float, service_rate: float) -> float:
    """Mean time in queue of an M/M/1 queue: rho / (mu - lambda), rho = lambda / mu."""
    if arrival_rate >= service_rate:
        raise ValueError("an M/M/1 queue is stable only below 100% utilisation")
    return arrival_rate / service_rate / (service_rate - arrival_rate)


def servers_for_wait(*, arrival_rate: float, service_rate: float, mean_wait: float) -> int:
    """The fewest servers whose M/M/c mean queueing time is at most `mean_wait`."""
    servers = max(1, math.floor(arrival_rate / service_rate) + 1)
    while mmc_mean_wait(arrival_rate=arrival_rate, service_rate=service_rate, servers=servers) > (
        mean_wait
    ):
        servers += 1
    return servers
