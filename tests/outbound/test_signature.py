"""HMAC-SHA256 signatures over timestamp + body."""

import hashlib
import hmac

from outbound import Signer, new_secret, sign, verify


def test_sign_is_hmac_sha256_of_timestamp_dot_body():
    secret, body = new_secret(), b'{"id":1}'
    expected = hmac.new(secret.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(secret, 1700000000, body) == "v1=" + expected


def test_verify_accepts_its_own_and_refuses_tampering_old_and_foreign():
    secret, body = new_secret(), b'{"id":1}'
    header = sign(secret, 1700000000, body)
    assert verify(secret, "1700000000", header, body, now=1700000100)
    assert verify(secret, "1700000000", "v1=00 " + header, body, now=1700000000)  # rotation
    assert not verify(secret, "1700000000", header, b'{"id":2}', now=1700000000)
    assert not verify(secret, "1700000001", header, body, now=1700000000)
    assert not verify(secret, "1700000000", header, body, now=1700000000 + 301)
    assert not verify(new_secret(), "1700000000", header, body, now=1700000000)
    assert not verify(secret, "soon", header, body, now=1700000000)


def test_a_signer_kept_for_many_deliveries_signs_each_as_sign_does():
    secret = new_secret()
    signer = Signer(secret)
    for timestamp, body in [(1700000000, b'{"id":1}'), (1700000001, b'{"id":2}'), (7, b"")]:
        assert signer.sign(timestamp, body) == sign(secret, timestamp, body)
    assert signer.sign(1700000000, b'{"id":1}') != Signer(new_secret()).sign(
        1700000000, b'{"id":1}'
    )
