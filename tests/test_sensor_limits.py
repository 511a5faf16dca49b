"""The connection gate (pure): totals, per-source caps and the per-source rate."""

from spampots.sensor.limits import ConnectionGate


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_per_source_and_total_caps():
    g = ConnectionGate(max_total=5, max_per_ip=2, rate_per_ip=100, clock=Clock())
    assert g.admit("a") is None and g.admit("a") is None
    assert g.admit("a") == ("max_sessions_per_ip", 2, 3)
    for ip in "bcd":
        assert g.admit(ip) is None
    assert g.admit("e")[0] == "max_sessions"
    g.release("a")
    assert g.admit("a") is None


def test_rate_per_source_refills_and_does_not_touch_others():
    clock = Clock()
    g = ConnectionGate(max_total=1000, max_per_ip=1000, rate_per_ip=2.0, clock=clock)
    admitted = sum(g.admit("flood") is None for _ in range(10))
    assert admitted == 4  # burst = 2 s worth
    assert g.admit("other") is None
    clock.t += 1.0
    assert sum(g.admit("flood") is None for _ in range(10)) == 2
    assert g.admit("flood")[0] == "new_sessions_per_s_per_ip"


def test_prune_forgets_idle_sources():
    clock = Clock()
    g = ConnectionGate(max_total=10, max_per_ip=10, rate_per_ip=1.0, clock=clock)
    g.admit("x")
    g.release("x")
    clock.t += 10
    g.prune()
    assert g._buckets == {}
