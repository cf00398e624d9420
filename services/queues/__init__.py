"""Durable queues on the mesh's SQLite state: priorities, leases, retries with jittered backoff, dead letters."""

from services.queues.queue import (
    FINAL_STATES,
    QUEUE_MIGRATIONS,
    STATES,
    LeaseLost,
    Task,
    TaskQueue,
    full_jitter_backoff,
)

__all__ = ["FINAL_STATES", "QUEUE_MIGRATIONS", "STATES", "LeaseLost", "Task", "TaskQueue", "full_jitter_backoff"]
