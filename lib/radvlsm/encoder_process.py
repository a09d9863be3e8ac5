"""The image encoder in a child process at a lower CPU priority (``--conf encoder_nice 10``).

Why: on a CPU of a few cores, a new image's encode (about a second, on every core) and another annotator's
cached prompt (a decode of tens of milliseconds) compete for the same cores, and the prompt waited 3x its idle
time while another user's pipeline ran (``benchmarks/bench_serving.py``). The OS scheduler already knows how to
serve an interactive task first: in a niced process the encode yields the cores to a decode when one runs and
uses all of them otherwise, so an encode alone takes as long as before (plus the embedding's copy, a few ms).

The child imports only numpy and the runtime's own package (not torch); it builds its encoder from a spec the
runtime gives (``child_spec()``: ``(kind, path, threads)``), so it computes the very embedding the in-process
runtime would. A child that dies is started again on the next encode (that encode is retried once).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

import numpy as np

logger = logging.getLogger(__name__)


def _build(kind: str, path: str, threads: int):
    if kind == "openvino":
        from radvlsm.openvino_compile import OpenVinoEncoder

        return OpenVinoEncoder(path, threads)
    raise ValueError(f"no child encoder for runtime kind '{kind}'")


def _serve(receive: Connection, send: Connection, spec: tuple[str, str, int], nice: int) -> None:
    os.nice(nice)
    try:
        encode = _build(*spec)
        send.send(("ready", os.getpid()))
    except Exception as exc:  # the parent raises it
        send.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            x = receive.recv()
        except EOFError:  # the parent went away
            return
        if x is None:
            return
        try:
            send.send(("ok", encode(x)))
        except Exception as exc:
            send.send(("error", f"{type(exc).__name__}: {exc}"))


class EncoderProcess:
    """One child process that encodes at ``nice`` (added to the server's own niceness). It is started as
    ``python -m radvlsm.encoder_process`` (not by multiprocessing's spawn, which would import the server's main
    module in the child) and talks over two pipes with multiprocessing's framing."""

    def __init__(self, spec: tuple[str, str, int], nice: int):
        self.spec, self.nice = spec, nice
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self._start()

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "radvlsm.encoder_process", str(to_child_r), str(from_child_w),
             json.dumps(list(self.spec)), str(self.nice)],
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, close_fds=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._send, self._receive = Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)
        try:
            status, value = self._receive.recv()
        except EOFError:
            status, value = "error", f"exited with {self._proc.wait(timeout=10)}"
        if status != "ready":
            raise RuntimeError(f"the encoder process could not start: {value}")
        self.pid = value
        logger.info(f"radvlsm: encoder process {self.pid} at nice +{self.nice} ({self.spec[0]}, "
                    f"{self.spec[2]} threads)")

    def encode(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            for attempt in (0, 1):
                try:
                    self._send.send(np.ascontiguousarray(x, dtype=np.float32))
                    status, value = self._receive.recv()
                    break
                except (EOFError, OSError):
                    if attempt:
                        raise
                    logger.error("radvlsm: the encoder process died; starting it again")
                    self._close_pipes()
                    self._start()
            if status != "ok":
                raise RuntimeError(f"encoder process: {value}")
            return value

    def _close_pipes(self) -> None:
        for conn in (self._send, self._receive):
            conn.close()

    def close(self) -> None:
        with self._lock:
            try:
                self._send.send(None)
            except OSError:
                pass
            self._close_pipes()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()


class NicedEncoder:
    """A runtime whose ``encode`` runs in an :class:`EncoderProcess`; name, decoder and description stay the
    wrapped runtime's (the embedding is the same, so cached embeddings stay valid)."""

    def __init__(self, runtime, nice: int):
        self.inner, self.nice = runtime, nice
        self.name = runtime.name
        self.decoder = getattr(runtime, "decoder", None)
        self.process = EncoderProcess(runtime.child_spec(), nice)

    def encode(self, x):
        import torch

        return torch.from_numpy(self.process.encode(x.detach().cpu().float().numpy()))

    def describe(self) -> dict:
        return {**self.inner.describe(), "process": {"pid": self.process.pid, "nice": self.nice}}


def niced(runtime, nice: int):
    """``runtime`` with its encoder in a child process at ``nice`` (> 0), when the runtime can give one its spec;
    else ``runtime`` as it is, with a warning."""
    if nice <= 0:
        return runtime
    if not hasattr(runtime, "child_spec"):
        logger.info(f"radvlsm: encoder_nice {nice} not used: the {runtime.name} runtime encodes in-process only")
        return runtime
    return NicedEncoder(runtime, nice)


if __name__ == "__main__":  # the child: python -m radvlsm.encoder_process <read fd> <write fd> <spec JSON> <nice>
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False),
           tuple(json.loads(sys.argv[3])), int(sys.argv[4]))
