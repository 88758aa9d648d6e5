"""Latent / embedding / text <-> protocol messages (no Ray): shapes, head tags, round trips, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcomm.engine.messaging import address, embedding_message, latent_message, message_embedding, message_latent
from latentcomm.protocols import LatentMessage, MalformedMessage, SignatureError, pack, unpack


def test_latent_round_trip_keeps_head_and_decodes(tiny_model):
    latent = tiny_model.compress(["What is the capital of France?"])
    msg = latent_message(latent, dtype="float32", sender="a", recipient="b", conversation_id="c")
    back = message_latent(unpack(pack(msg)))
    assert back.shape == latent.shape
    assert (back.fingerprint, back.backbone_id) == (tiny_model.fingerprint, tiny_model.backbone.backbone_id)
    torch.testing.assert_close(back.vectors, latent.vectors)
    assert tiny_model.decode(back, max_new_tokens=4) == tiny_model.decode(latent, max_new_tokens=4)


def test_float16_latent_embeds_like_the_original(tiny_model):
    latent = tiny_model.compress(["Two plus two equals four."])
    back = message_latent(unpack(pack(latent_message(latent, dtype="float16"))))
    a, b = tiny_model.embed_latent(latent)[0], tiny_model.embed_latent(back)[0]
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999


def test_embedding_round_trip(tiny_model):
    vector = tiny_model.encode("hello")
    msg = embedding_message(vector, fingerprint=tiny_model.fingerprint, backbone_id="x", sender="a")
    assert msg.kind == "embedding" and msg.shape == vector.shape
    np.testing.assert_array_equal(message_embedding(unpack(pack(msg))), vector)


def test_batches_and_wrong_kinds_are_refused(tiny_model):
    latent = tiny_model.compress(["one", "two"])
    with pytest.raises(ValueError, match="batch of 2"):
        latent_message(latent)
    with pytest.raises(MalformedMessage, match="expected a 'latent'"):
        message_latent(LatentMessage.from_text("hi"))
    with pytest.raises(ValueError, match=r"\(D,\)"):
        embedding_message(np.zeros((2, 3)), fingerprint="f", backbone_id="b")


def test_address_resets_signature_and_rejects_payload_fields():
    key = b"k" * 32
    signed = unpack(pack(LatentMessage.from_text("hi", sender="a"), key=key), key=key)
    moved = address(signed, recipient="c", metadata={"seq": 3})
    assert moved.signature is None and moved.recipient == "c" and moved.metadata["seq"] == 3
    assert moved.message_id == signed.message_id and moved.text() == "hi"
    with pytest.raises(ValueError, match="cannot set"):
        address(signed, payload=b"other")
    with pytest.raises(SignatureError):
        unpack(pack(moved), key=key)
