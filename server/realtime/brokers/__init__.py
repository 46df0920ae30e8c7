"""Brokers: one interface (``base.Broker``), a memory and a Redis implementation,
and the one switch that picks them (as Centrifugo's engine): ``REDIS_URL`` unset
means one process and the memory broker; set, Redis."""

from __future__ import annotations

from server.realtime.brokers.base import Broker
from server.realtime.brokers.memory import MemoryBroker
from server.realtime.presence import MemoryPresence, Presence


def redis_urls(redis_url: str | None) -> list[str]:
    """REDIS_URL's servers (comma-separated), in order."""
    return [url.strip() for url in (redis_url or "").split(",") if url.strip()]


def make_broker(redis_url: str | None, timeout: float = 2.0, publish_delay: float = 0.0) -> Broker:
    urls = redis_urls(redis_url)
    if not urls:
        return MemoryBroker()
    from server.realtime.brokers.redis import RedisBroker

    return RedisBroker(urls, timeout, publish_delay)


def make_presence(redis_url: str | None, node: str, timeout: float = 2.0, ttl: int = 10) -> Presence:
    urls = redis_urls(redis_url)
    if not urls:
        return MemoryPresence(node)
    from server.realtime.presence_redis import RedisPresence

    return RedisPresence(urls, node, timeout, ttl)
