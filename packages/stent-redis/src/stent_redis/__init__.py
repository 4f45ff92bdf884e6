"""Redis pub/sub notifications for Stent.

``RedisBackend(url)`` wakes workers and waiters in other processes the moment work is
dispatched or a step finishes; without it they learn the same through their database poll,
only later::

    from stent import Stent
    from stent_redis import RedisBackend

    executor = Stent(backend, notification_backend=RedisBackend("redis://localhost:6379"))
"""

from __future__ import annotations

from ._backend import ClientFactory, RedisBackend, RedisNotificationStats
from ._urls import mask_url

__all__ = ["ClientFactory", "RedisBackend", "RedisNotificationStats", "mask_url"]
