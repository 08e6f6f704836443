"""Webhook URLs: http(s) only, and never the gateway itself."""

import pytest

from outbound.urls import InvalidWebhookUrl, is_gateway_itself, parse


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://billing.example/hooks", ("billing.example", 443)),
        ("http://10.0.0.5:8000/x?y=1", ("10.0.0.5", 8000)),
        ("http://[::1]:9000/", ("::1", 9000)),
    ],
)
def test_parse(url, expected):
    assert parse(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://billing.example/",
        "file:///etc/passwd",
        "billing.example/hooks",
        "http:///x",
        "https://h:99999/",
        "javascript:alert(1)",
        "https://x/" + "a" * 2100,
    ],
)
def test_parse_refuses(url):
    with pytest.raises(InvalidWebhookUrl):
        parse(url)


def test_the_gateway_itself_is_its_port_on_an_address_of_its_own():
    own_ports, own = [8080, 9108], ["192.0.2.7"]
    assert is_gateway_itself(["127.0.0.1"], 8080, own_ports, own)
    assert is_gateway_itself(["::1"], 9108, own_ports, own)
    assert is_gateway_itself(["0.0.0.0"], 8080, own_ports, own)
    assert is_gateway_itself(["192.0.2.7"], 8080, own_ports, own)
    assert is_gateway_itself(["::ffff:127.0.0.1"], 8080, own_ports, own)
    assert not is_gateway_itself(["127.0.0.1"], 8081, own_ports, own)  # a receiver beside it
    assert not is_gateway_itself(["198.51.100.1"], 8080, own_ports, own)
