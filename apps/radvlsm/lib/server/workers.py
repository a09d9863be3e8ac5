"""Inference off the event loop: MONAI Label 0.8.5 runs ``POST /infer/{model}`` in an ``async def`` endpoint on
the event-loop thread, so one user's new-image encode or pipeline stalls every other request (``/info``, datastore
calls, label saves, a second user's cached click). Fix: that route's endpoint is replaced by one that runs
MONAI Label's own ``run_inference`` in a bounded worker pool (``--conf infer_workers``, default 4) and reports how
long the request waited for a worker (``latencies_ms.queue``). The compute stays bounded per device by the
predictor's locks (one encode and one decode at a time; :class:`radvlsm.predictor.SegmentPredictor`), and
identical encodes are computed once (the embedding cache's single flight). Drop when upstream runs inference off
the event loop (``tests/test_server_workers.py`` passes without :func:`install`).

Result files (:func:`install_result_cleanup`, installed whatever ``infer_workers`` is): ``send_response`` deletes a
result after answering with ``remove_file``; results are written alone in a private folder
(:func:`radvlsm.service.result_path`), so that call is pointed at :func:`radvlsm.service.remove_result`, which removes
the folder too.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
import time
from typing import Any

import anyio

from radvlsm.service import remove_result

logger = logging.getLogger(__name__)

#: milliseconds the request being answered waited for a worker (read by the infer tasks for ``latencies_ms``)
QUEUE_MS: contextvars.ContextVar[float | None] = contextvars.ContextVar("radvlsm_queue_ms", default=None)


class InferPool:
    """At most ``workers`` inferences at once, in threads; the others wait their turn (counted, logged)."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"infer_workers must be >= 1, got {workers}")
        self.workers = workers
        self.limiter = anyio.CapacityLimiter(workers)
        self.waiting = 0
        self._count = threading.Lock()  # the loop thread counts arrivals, the workers count starts

    async def run(self, fn, *args: Any) -> Any:
        arrived = time.perf_counter()
        with self._count:
            self.waiting += 1
            waiting = self.waiting
        if self.limiter.available_tokens == 0:
            logger.info(f"radvlsm: infer queue: {waiting} waiting for {self.workers} busy workers")

        def work():
            with self._count:
                self.waiting -= 1
            QUEUE_MS.set((time.perf_counter() - arrived) * 1e3)  # this worker thread's own context
            return fn(*args)

        return await anyio.to_thread.run_sync(work, limiter=self.limiter)


PATH = "/infer/{model}"


def _infer_routes(routers: list) -> list[tuple[Any, Any]]:
    """``(router, route)`` of ``POST /infer/{model}``: in MONAI Label's infer router (FastAPI >= 0.165 includes
    routers by reference) and in the app's own routing table (older FastAPI copies included routes there)."""
    from fastapi.routing import APIRoute

    return [(router, route) for router in routers for route in router.routes
            if isinstance(route, APIRoute) and route.path == PATH and "POST" in route.methods]


def _replace(router, old, endpoint) -> None:
    """``old`` -> a route to ``endpoint`` with the same path, methods, docs and position."""
    index = router.routes.index(old)
    router.routes.remove(old)
    router.add_api_route(old.path.removeprefix(router.prefix or ""), endpoint, methods=list(old.methods),
                         summary=old.summary, responses=old.responses, tags=old.tags, name=old.name)
    router.routes.insert(index, router.routes.pop())


def install(app, workers: int) -> InferPool:
    """Replace ``POST /infer/{model}``'s endpoint with one that runs in an :class:`InferPool` (same parameters,
    same answers, same position in the routing table)."""
    from monailabel.endpoints import infer as ep_infer

    found = _infer_routes([ep_infer.router, app.router])
    if not found:
        raise RuntimeError(f"radvlsm: MONAI Label's POST {PATH} route was not found; cannot move inference off the "
                           "event loop (is this MONAI Label 0.8.5?)")
    installed = getattr(found[0][1].endpoint, "radvlsm_pool", None)
    if installed is not None:
        return installed
    pool = InferPool(workers)
    original = found[0][1].endpoint
    params = list(inspect.signature(original).parameters)

    @functools.wraps(original)
    async def endpoint(**kwargs):
        kwargs.pop("user", None)  # the dependency has checked the role; run_inference does not take it
        args = [kwargs[name] for name in params if name != "user"]
        # looked up at call time: the guards wrap ep_infer.run_inference after MONAI Label imported it
        return await pool.run(ep_infer.run_inference, *args)

    endpoint.radvlsm_pool = pool
    for router, route in found:
        _replace(router, route, endpoint)
    logger.info(f"radvlsm: inference runs off the event loop ({workers} workers)")
    return pool


def install_result_cleanup() -> None:
    """Point ``send_response``'s delete-after-answer at :func:`radvlsm.service.remove_result`, with or without the
    worker pool: every result lives in a private folder, which must go with it."""
    from monailabel.endpoints import infer as ep_infer

    ep_infer.remove_file = remove_result
