"""WhatsApp webhooks: the verification handshake and the ``X-Hub-Signature-256`` check."""

from __future__ import annotations

import hashlib
import json

import pytest
from webhook_support import (
    APP_SECRET,
    TEXT_NOTIFICATION,
    VERIFY_TOKEN,
    as_meta_sends,
    envelope,
    handshake,
    inbound,
    messages_value,
    sign,
)

from omnichannel import Secret, WebhookError
from omnichannel_whatsapp.webhook import verify_challenge, verify_signature

# ---------------------------------------------------------------- verification handshake


def test_verify_challenge_returns_the_challenge():
    assert verify_challenge(handshake(), Secret(VERIFY_TOKEN)) == "1158201444"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (handshake(token="not-the-token"), "hub.verify_token does not match"),
        (handshake(token=None), "hub.verify_token does not match"),
        (handshake(mode="unsubscribe"), "hub.mode must be 'subscribe'"),
        (handshake(mode=None), "hub.mode must be 'subscribe'"),
    ],
)
def test_verify_challenge_refuses(query, message):
    with pytest.raises(WebhookError, match=message) as info:
        verify_challenge(query, Secret(VERIFY_TOKEN))
    assert info.value.status == 403


@pytest.mark.parametrize("token", [None, Secret("")])
def test_verify_challenge_without_configured_token(token):
    with pytest.raises(WebhookError, match=r"plugins\.whatsapp\.verify_token is not set") as info:
        verify_challenge(handshake(token=""), token)
    assert info.value.status == 403


def test_verify_challenge_without_challenge():
    with pytest.raises(WebhookError, match=r"hub\.challenge is missing") as info:
        verify_challenge(handshake(challenge=None), Secret(VERIFY_TOKEN))
    assert info.value.status == 400


# ---------------------------------------------------------------- signature


def test_verify_signature_accepts_the_exact_bytes():
    body = as_meta_sends(TEXT_NOTIFICATION)
    verify_signature(body, sign(body), Secret(APP_SECRET))
    verify_signature(body, sign(body).upper().replace("SHA256=", "sha256="), Secret(APP_SECRET))


def test_verify_signature_refuses_reserialised_json():
    payload = envelope(messages_value(inbound("text", {"body": "Olá, tem em azul/verde? 👍"})))
    body = as_meta_sends(payload)
    assert b"\\u00e1" in body
    assert b"\\/" in body
    reserialised = json.dumps(json.loads(body), ensure_ascii=False).encode()
    with pytest.raises(WebhookError) as info:
        verify_signature(reserialised, sign(body), Secret(APP_SECRET))
    assert info.value.status == 403


def test_verify_signature_missing_header_is_401():
    with pytest.raises(WebhookError, match="X-Hub-Signature-256 header is missing") as info:
        verify_signature(b"{}", None, Secret(APP_SECRET))
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (sign(b"{}", "another secret"), "does not match"),
        (sign(b"{ }"), "does not match"),
        ("sha1=" + hashlib.sha1(b"{}").hexdigest(), "is not 'sha256=<64 hex digits>'"),
        (sign(b"{}")[:-2], "is not 'sha256=<64 hex digits>'"),
        (sign(b"{}").removeprefix("sha256="), "is not 'sha256=<64 hex digits>'"),
        ("sha256=" + "é" * 64, "is not 'sha256=<64 hex digits>'"),
        ("sha256=" + "z" * 64, "is not 'sha256=<64 hex digits>'"),
    ],
)
def test_verify_signature_refuses_wrong_or_malformed(header, message):
    with pytest.raises(WebhookError, match=message) as info:
        verify_signature(b"{}", header, Secret(APP_SECRET))
    assert info.value.status == 403


@pytest.mark.parametrize("secret", [None, Secret("")])
def test_verify_signature_without_app_secret_refuses_everything(secret):
    with pytest.raises(WebhookError, match=r"plugins\.whatsapp\.app_secret is not set") as info:
        verify_signature(b"{}", sign(b"{}", ""), secret)
    assert info.value.status == 403
