"""The encoder in a niced child process (``--conf encoder_nice``) and the decoder's turns: what a user waiting on
a prompt gets first while another user's new image encodes and its candidates decode."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from radvlsm.encoder_process import EncoderProcess, NicedEncoder, niced
from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.stack import SERVER_ENCODER_NICE, Settings
from tests.conftest import SAMPLES, tight_box

CASE = "bus_0075-r"


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    bb = build_backbone("litemedsam")
    folder = str(tmp_path_factory.mktemp("ov"))
    inproc = SegmentPredictor(bb, runtime="openvino", runtime_dir=folder)
    child = SegmentPredictor(bb, runtime="openvino", runtime_dir=folder, encoder_nice=7)
    yield inproc, child
    child.runtime.process.close()


def test_the_child_encodes_what_the_server_process_would_at_a_lower_priority(predictors):
    inproc, child = predictors
    assert isinstance(child.runtime, NicedEncoder) and child.runtime.name == inproc.runtime.name == "openvino"
    pid = child.runtime.process.pid
    assert pid != os.getpid() and os.getpriority(os.PRIO_PROCESS, pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 7,
                                                                              19)
    assert child.runtime.describe()["process"] == {"pid": pid, "nice": 7, "decodes": True}
    image = load_image(SAMPLES / "images" / f"{CASE}.png")
    assert torch.equal(inproc.encode(image).embedding, child.encode(image).embedding)
    # the mask too (the decoder runs in the server process either way)
    assert np.array_equal(inproc.decode(inproc.encode(image), np.array(tight_box(CASE)))[0],
                          child.decode(child.encode(image), np.array(tight_box(CASE)))[0])


def test_a_child_that_dies_is_started_again_and_the_encode_answers(predictors):
    inproc, child = predictors
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    first = child.runtime.encode(x)
    old = child.runtime.process.pid
    os.kill(old, 9)
    time.sleep(0.3)
    again = child.runtime.encode(x)
    assert child.runtime.process.pid != old and torch.equal(first, again)
    assert not os.path.exists(f"/proc/{old}")  # the dead child was waited for: no zombie left
    assert torch.equal(again, inproc.runtime.encode(x))


def test_a_child_that_cannot_build_its_encoder_says_why():
    with pytest.raises(RuntimeError, match="could not start: .*no child encoder for runtime kind 'nope'"):
        EncoderProcess(("nope", "/nowhere", 1), 5)


def test_runtimes_without_a_child_spec_stay_in_process_and_nice_0_changes_nothing():
    bb = build_backbone("sam_vit_tiny")
    eager = SegmentPredictor(bb, runtime="eager", encoder_nice=10)
    assert not isinstance(eager.runtime, NicedEncoder) and eager.runtime.name == "eager"
    assert niced(eager.runtime, 0) is eager.runtime
    # the library encodes in-process; the server (MONAI Label's --conf) encodes in a child at the lowest priority
    assert Settings().encoder_nice == 0 and Settings.from_conf({}).encoder_nice == SERVER_ENCODER_NICE == 19
    assert Settings.from_conf({"encoder_nice": "0"}).encoder_nice == 0


def test_a_single_prompt_goes_before_the_rest_of_a_batch(predictors):
    """A pipeline's 8 candidates decode one prompt at a time; a user's prompt sent while they decode is answered
    after at most the candidate in progress (about one decode), not after all 8."""
    inproc, _ = predictors
    image = load_image(SAMPLES / "images" / f"{CASE}.png")
    enc = inproc.encode(image)
    box = np.array(tight_box(CASE), np.float32)
    boxes = np.stack([box + i for i in range(8)])
    t = time.perf_counter()
    inproc.decode(enc, box)
    one = time.perf_counter() - t
    done: dict[str, float] = {}

    def batch():
        inproc.decode_boxes_lowres(enc, boxes)
        done["batch"] = time.perf_counter()

    worker = threading.Thread(target=batch)
    worker.start()
    time.sleep(one * 1.5)  # the batch is decoding its first or second candidate
    sent = time.perf_counter()
    inproc.decode(enc, box)
    done["prompt"] = time.perf_counter()
    worker.join()
    assert done["prompt"] < done["batch"]
    assert done["prompt"] - sent < 4 * one, (done["prompt"] - sent, one)
    # one at a time gives what one pass gave: the masks of each prompt
    low, iou = inproc.decode_boxes_lowres(enc, boxes[:3])
    assert low.shape[0] == 3 and iou.shape[0] == 3


def test_a_batch_decodes_in_the_child_and_gives_what_the_server_process_gives(predictors):
    """A pipeline's candidates (``decode_boxes_lowres``) decode in the niced child, on the embedding it kept when
    it encoded the image, or, when it does not hold it (restarted, or the embedding came from a disk cache),
    on the embedding sent once; the masks are those decoded in the server process."""
    inproc, child = predictors
    image = load_image(SAMPLES / "images" / f"{CASE}.png")
    box = np.array(tight_box(CASE), np.float32)
    boxes = np.stack([box, box + 5, box - 5])
    want, want_iou = inproc.decode_boxes_lowres(inproc.encode(image), boxes)
    child.cache.clear()
    enc = child.encode(image)
    assert enc.key is not None and child.runtime.describe()["process"]["decodes"] is True
    got, got_iou = child.decode_boxes_lowres(enc, boxes)
    assert torch.equal(got, want) and np.array_equal(got_iou, want_iou)
    os.kill(child.runtime.process.pid, 9)  # the child's embeddings are gone with it
    time.sleep(0.3)
    again, _ = child.decode_boxes_lowres(enc, boxes)
    assert torch.equal(again, want)


def test_a_users_prompt_is_answered_while_a_batch_decodes_in_the_child(predictors):
    """With the niced child, another user's 8 candidates decode at the child's priority: a prompt sent meanwhile
    is decoded in the server process at once and answered before the batch ends."""
    _, child = predictors
    image = load_image(SAMPLES / "images" / f"{CASE}.png")
    enc = child.encode(image)
    box = np.array(tight_box(CASE), np.float32)
    t = time.perf_counter()
    child.decode(enc, box)
    one = time.perf_counter() - t
    done: dict[str, float] = {}

    def batch():
        child.decode_boxes_lowres(enc, np.stack([box + i for i in range(8)]))
        done["batch"] = time.perf_counter()

    worker = threading.Thread(target=batch)
    worker.start()
    time.sleep(one * 1.5)
    sent = time.perf_counter()
    child.decode(enc, box)
    done["prompt"] = time.perf_counter()
    worker.join()
    assert done["prompt"] < done["batch"] and done["prompt"] - sent < 4 * one, (done, sent, one)


def test_a_bf16_runtime_is_compiled_at_bf16_in_the_child_too(tmp_path):
    """The child compiles what the runtime compiled (its precision travels in ``child_spec``): the same
    embedding, bit for bit, as the bf16 runtime in the server process."""
    from radvlsm.openvino_compile import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bf16 units")
    bb = build_backbone("sam_vit_tiny")
    inproc = SegmentPredictor(bb, runtime="openvino_bf16", runtime_dir=str(tmp_path))
    child = SegmentPredictor(bb, runtime="openvino_bf16", runtime_dir=str(tmp_path), encoder_nice=3)
    try:
        assert child.runtime.process.spec[-1] == "bf16"
        x = torch.rand(1, 3, bb.img_size, bb.img_size, generator=torch.Generator().manual_seed(3))
        f32 = SegmentPredictor(bb, runtime="openvino", runtime_dir=str(tmp_path)).runtime.encode(x)
        got = child.runtime.encode(x)
        assert torch.equal(inproc.runtime.encode(x), got) and not torch.equal(f32, got)
    finally:
        child.runtime.process.close()
