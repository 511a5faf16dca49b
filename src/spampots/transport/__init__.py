"""Ship events and message bodies to NATS JetStream, collect them into a central store.

See ``docs/network.md``. ``nats-py`` is imported lazily by the parts that talk to a broker.
"""

from .config import NatsSection, load_section

__all__ = ["NatsSection", "load_section"]
