"""The embedded stack: PostgreSQL and the tansu Kafka broker as child processes, and their supervisor."""

from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.ports import free_port, wait_for_port
from runledger.embedded.postgres import EmbeddedPostgres

__all__ = ["EmbeddedBroker", "EmbeddedPostgres", "free_port", "wait_for_port"]
