"""`gpt2 serve`: an OpenAI-compatible completions server with continuous batching.

scheduler: one batch over the model's slots, a bounded queue, a step at a time;
schemas: the request and its checks; app: the FastAPI routes (needs the
`server` extra: pip install '.[server]' from the source folder); ray_deployment: the same
routes on Ray Serve, one replica per GPU (the `ray` extra).
"""

from gpt2.serve.scheduler import QueueFullError, Request, Scheduler, SchedulerClosedError

__all__ = ["QueueFullError", "Request", "Scheduler", "SchedulerClosedError"]
