"""The image encoder, and the decodes nobody is waiting on, in a child process at a lower CPU priority
(``--conf encoder_nice 19``, the server's default).

Why: on a CPU of a few cores, a new image's encode (about a second, on every core) and another annotator's
cached prompt (a decode of tens of milliseconds) compete for the same cores, and the prompt waited 3-4x its idle
time while another user's pipeline ran (``benchmarks/bench_serving.py``). The OS scheduler already knows how to
serve an interactive task first: in a niced process the encode, and a pipeline's candidate decodes, yield the
cores to a user's prompt when one runs and use all of them otherwise, so alone they take as long as before (plus
copying the arrays, a few ms).

The child imports numpy and OpenVINO (not torch) and compiles the runtime's own exported models (``child_spec()``:
``(kind, encoder path, threads, decoder path)``), so it computes the very embedding and masks the in-process runtime
would. It keeps the last few embeddings it computed by the key the predictor gives (its cache key), so a decode
sends only the prompts; an embedding it does not hold (from the disk cache, or after a restart) is sent once. A
child that dies is started again on the next call (that call is retried once).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from multiprocessing.connection import Connection

import numpy as np

logger = logging.getLogger(__name__)

#: embeddings the child keeps for decodes (4 MB each for LiteMedSAM)
CHILD_EMBEDDINGS = 8


def _build(kind: str, encoder: str, threads: int, decoder: str = "", precision: str = "f32"):
    if kind == "openvino":
        from radvlsm.openvino_compile import OpenVinoDecoderCore, OpenVinoEncoder

        return (OpenVinoEncoder(encoder, threads, precision),
                OpenVinoDecoderCore(decoder, threads, precision) if decoder else None)
    raise ValueError(f"no child encoder for runtime kind '{kind}'")


def _serve(receive: Connection, send: Connection, spec: tuple, nice: int) -> None:
    os.nice(nice)
    try:
        encode, decode = _build(*spec)
        send.send(("ready", os.getpid()))
    except Exception as exc:  # the parent raises it
        send.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    kept: OrderedDict[str, np.ndarray] = OrderedDict()

    def keep(key: str | None, embedding: np.ndarray) -> None:
        if key is not None:
            kept[key] = embedding
            kept.move_to_end(key)
            while len(kept) > CHILD_EMBEDDINGS:
                kept.popitem(last=False)

    while True:
        try:
            message = receive.recv()
        except EOFError:  # the parent went away
            return
        if message is None:
            return
        try:
            if message[0] == "encode":
                _, key, x = message
                embedding = encode(x)
                keep(key, embedding)
                send.send(("ok", embedding))
            else:  # ("decode", key, sparse, embedding or None)
                _, key, sparse, embedding = message
                if embedding is not None:
                    keep(key, embedding)
                if key not in kept or decode is None:
                    send.send(("missing", None))
                else:
                    kept.move_to_end(key)
                    send.send(("ok", decode(kept[key], sparse)))
        except Exception as exc:
            send.send(("error", f"{type(exc).__name__}: {exc}"))


class EncoderProcess:
    """One child process that encodes (and decodes in the background) at ``nice`` (added to the server's own
    niceness). It is started as ``python -m radvlsm.encoder_process`` (not by multiprocessing's spawn, which would
    import the server's main module in the child) and talks over two pipes with multiprocessing's framing."""

    def __init__(self, spec: tuple, nice: int):
        self.spec, self.nice = tuple(spec), nice
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self._start()

    @property
    def decodes(self) -> bool:
        return len(self.spec) > 3 and bool(self.spec[3])

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
            self._close_pipes()
            self._reap()
            raise RuntimeError(f"the encoder process could not start: {value}")
        self.pid = value
        logger.info(f"radvlsm: encoder process {self.pid} at nice +{self.nice} ({self.spec[0]}, "
                    f"{self.spec[2]} threads{', decodes too' if self.decodes else ''})")

    def _call(self, message: tuple):
        """One round trip (under the lock); a dead child is started again and the message sent once more."""
        for attempt in (0, 1):
            try:
                self._send.send(message)
                return self._receive.recv()
            except (EOFError, OSError):
                if attempt:
                    raise
                logger.error("radvlsm: the encoder process died; starting it again")
                self._close_pipes()
                self._reap()
                self._start()
        raise AssertionError("unreachable")

    def encode(self, x: np.ndarray, key: str | None = None) -> np.ndarray:
        with self._lock:
            status, value = self._call(("encode", key, np.ascontiguousarray(x, dtype=np.float32)))
        if status != "ok":
            raise RuntimeError(f"encoder process: {value}")
        return value

    def decode(self, key: str, sparse: np.ndarray, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The four low-res masks and IoUs of ``sparse`` on the embedding of ``key`` (sent when the child lacks it)."""
        sparse = np.ascontiguousarray(sparse, dtype=np.float32)
        with self._lock:
            status, value = self._call(("decode", key, sparse, None))
            if status == "missing":
                status, value = self._call(("decode", key, sparse, np.ascontiguousarray(embedding, np.float32)))
        if status != "ok":
            raise RuntimeError(f"encoder process: {value}")
        return value

    def _reap(self) -> None:
        """Wait for the old child (no zombie is left), killing it if it still runs."""
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)

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
            self._reap()


class NicedEncoder:
    """A runtime whose ``encode`` (and, with its decoder exported, ``decode_background``) runs in an
    :class:`EncoderProcess`; name, decoder and description stay the wrapped runtime's (the embedding is the same,
    so cached embeddings stay valid)."""

    def __init__(self, runtime, nice: int):
        self.inner, self.nice = runtime, nice
        self.name = runtime.name
        self.decoder = getattr(runtime, "decoder", None)
        self.process = EncoderProcess(runtime.child_spec(), nice)

    def encode(self, x, key: str | None = None):
        import torch

        return torch.from_numpy(self.process.encode(x.detach().cpu().float().numpy(), key))

    def decode_background(self, key: str, embedding, sparse):
        """The runtime decoder's ``run`` at the child's priority: for decodes nobody waits on (a batch's). Called
        only with the runtime's exported decoder, which the child then compiles too (``child_spec``)."""
        import torch

        masks, iou = self.process.decode(key, sparse.detach().cpu().float().numpy(),
                                         embedding.detach().cpu().float().numpy())
        return torch.from_numpy(masks), torch.from_numpy(iou)

    def describe(self) -> dict:
        return {**self.inner.describe(), "process": {"pid": self.process.pid, "nice": self.nice,
                                                     "decodes": self.process.decodes}}


def niced(runtime, nice: int):
    """``runtime`` with its encoder in a child process at ``nice`` (> 0), when the runtime can give one its spec;
    else ``runtime`` as it is."""
    if nice <= 0:
        return runtime
    if not hasattr(runtime, "child_spec"):
        logger.info(f"radvlsm: encoder_nice {nice} not used: the {runtime.name} runtime encodes in-process only")
        return runtime
    return NicedEncoder(runtime, nice)


if __name__ == "__main__":  # the child: python -m radvlsm.encoder_process <read fd> <write fd> <spec JSON> <nice>
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False),
           tuple(json.loads(sys.argv[3])), int(sys.argv[4]))
