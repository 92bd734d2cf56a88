# ruff: noqa: RUF001  (look-alike characters are the point of these forms)
"""SSRF bypass forms (issue 21 item 6): hosts the HTTP client normalises into a non-public
address (IDNA/NFKC digits, decimal, octal, hex, shorthand IPv4, IPv4-mapped IPv6, trailing
dots, userinfo tricks) are refused when set, and a stored one is never delivered to.
The forms come from the public SSRF cheat sheets (PayloadsAllTheThings "Server Side Request
Forgery", OWASP's SSRF prevention cheat sheet)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gate.delivery.destinations import non_public, normal_host
from tests.conftest import MakeClient, auth, new_workspace
from tests.test_delivery import Receiver, receiver  # noqa: F401
from tests.test_webhook_destinations import retried_not_delivered

BYPASSES = [
    # loopback, every spelling
    "http://127.0.0.1/", "http://127.1/", "http://127.0.1/", "http://0x7f.1/",
    "http://0x7f000001/", "http://2130706433/", "http://017700000001/", "http://0177.0.0.1/",
    "http://0177.0.0.01/", "http://0x7f.0x0.0x0.0x1/", "http://127.000.000.001/",
    "http://127.255.255.254/", "http://0/", "http://0.0.0.0/", "http://0x0/",
    "http://[::1]/", "http://[0:0:0:0:0:0:0:1]/", "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/", "http://[0000::1]/", "http://[::]/",
    "http://localhost/", "http://LOCALHOST/", "http://localhost./", "http://api.localhost/",
    "http://127.0.0.1./", "http://2130706433./",
    # Unicode the client normalises (IDNA/NFKC): the ①②⑦.0.0.1 and friends
    "http://①②⑦.0.0.1:9/x", "http://①②⑦.⓪.⓪.①/", "http://１２７.０.０.１/",
    "http://127。0。0。1/", "http://⑯⑨.②⑤④.⑯⑨.②⑤④/", "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
    "http://ｌｏｃａｌｈｏｓｔ/", "http://𝟏𝟐𝟕.𝟎.𝟎.𝟏/",
    # cloud metadata (link-local)
    "http://169.254.169.254/latest/meta-data/", "http://0xa9fea9fe/", "http://2852039166/",
    "http://0251.0376.0251.0376/", "http://169.254.43518/", "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/", "http://0xA9.0xFE.0xA9.0xFE/",
    # private networks
    "http://10.0.0.1/", "http://012.0.0.1/", "http://0xa.0.0.1/", "http://167772161/",
    "http://192.168.1.1/", "http://0xc0.0xa8.1.1/", "http://3232235777/",
    "http://172.16.0.1/", "http://[fc00::1]/", "http://[fd12:3456::1]/",
    "http://100.64.0.1/", "http://[::ffff:10.0.0.1]/", "http://198.18.0.1/",
    # userinfo and port tricks: the host is what counts
    "http://example.com@127.0.0.1/", "http://user:pass@0x7f.1:80/", "http://127.0.0.1:80@/",
    "http://[::1]:8080/hook", "http://127.1:65535/",
]  # fmt: skip


def test_there_are_at_least_50_forms() -> None:
    assert len(set(BYPASSES)) >= 50


@pytest.mark.parametrize("url", BYPASSES)
def test_every_form_normalises_to_a_non_public_host(url: str) -> None:
    host = normal_host(url)
    assert not host or non_public(host) is not None or host.endswith("localhost"), (
        url,
        host,
    )


async def test_every_form_is_refused_when_set(make_client: MakeClient) -> None:
    client = await make_client(webhook_allow_private=False)
    ws = await new_workspace(client)
    accepted = []
    for url in BYPASSES:
        resp = await client.patch(
            "/v1/workspace", json={"switch_webhook_url": url}, headers=auth(ws["key"])
        )
        if resp.status != 400:
            accepted.append((url, resp.status))
    assert not accepted, accepted


@pytest.mark.parametrize("spelling", ["①②⑦.0.0.1", "0x7f.1", "2130706433"])
async def test_a_stored_form_is_never_delivered_to(
    make_client: MakeClient,
    redis: Redis,
    receiver: Receiver,  # noqa: F811
    spelling: str,
) -> None:
    client = await make_client(webhook_allow_private=False)
    url = receiver.url.replace("127.0.0.1", spelling)
    await retried_not_delivered(client, redis, receiver, url)
