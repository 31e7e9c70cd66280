"""/docs and /redoc work on an air-gapped machine: every asset they load is served by the service."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.integration

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
ANY_URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+""")


@pytest.mark.parametrize("service", ["chat", "analytics"])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_another_host(live, service, page):
    base = getattr(live, service).url
    with httpx.Client(base_url=base, timeout=10) as client:
        html = client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert not ANY_URL.findall(html.text), "the page names another host"
        assets = ASSET.findall(html.text)
        assert len(assets) >= 2, "a script and a favicon at least"
        for asset in assets:
            assert asset.startswith("/"), asset
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset
        assert client.get("/openapi.json").status_code == 200


def test_swagger_ui_does_not_send_the_schema_to_an_online_validator(live):
    html = httpx.get(live.chat.url + "/docs", timeout=10).text
    assert '"validatorUrl": null' in html
