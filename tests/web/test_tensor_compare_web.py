"""The console's compare page shows two versions tensor by tensor under their files (issue 17):
changed tensors first with their relative change, then reshaped, added, removed and unchanged
ones; tensor names escaped; files that are not safetensors named as such; and, in Chromium on a
390 px screen, the table readable without the page scrolling sideways."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from tests.support import unique
from tests.tensor_files import (
    FINE_TUNE_CHANGES,
    fine_tune,
    relative_change,
    safetensors_bytes,
    tensor,
)
from tests.web.conftest import Console

HOSTILE = "<script>alert(1)</script>.weight"


@pytest.fixture(scope="module")
def tuned(console: Console) -> str:
    """A model of the console's project whose version 2 fine-tunes version 1 (`fine_tune`,
    plus a tensor with markup in its name that changed); returns the compare page's path."""
    a, b = fine_tune(seed=11)
    a[HOSTILE] = tensor("F32", np.ones(4))
    b[HOSTILE] = tensor("F32", np.ones(4) * 2)
    model = unique("llm")
    for tensors in (a, b):
        files = {"model.safetensors": safetensors_bytes(tensors), "config.json": b"{}"}
        r = console.deployment.commit(console.owner, console.project, model, files)
        assert r.status_code == 201, r.text
    return f"/projects/{console.project}/models/{model}/compare?a=1&b=2"


def rows(html: str) -> list[tuple[str, str, str, str]]:
    table = re.search(r'<table class="compare tensors">.*?</table>', html, re.S)
    assert table, "no tensor table"
    cells = re.findall(
        r'<tr class="(\w+)"><td class="tensor">(.*?)</td><td>\w+</td><td>(.*?)</td>'
        r'<td class="num">(.*?)</td></tr>',
        table.group(0),
    )
    return [(change, name, layout, relative) for change, name, layout, relative in cells]


def test_compare_page_lists_tensors_changed_first(
    console: Console, tuned: str, web_as: Any
) -> None:
    page = web_as(console.viewer).get(tuned)
    assert page.status_code == 200, page.text
    found = rows(page.text)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;.weight"
    assert "<script>alert(1)" not in page.text
    changes = {name: change for change, name, _, _ in found}
    assert changes == {**FINE_TUNE_CHANGES, escaped: "changed"}
    order = [change for change, *_ in found]
    ranks = ["changed", "reshaped", "added", "removed", "unchanged"]
    assert order == sorted(order, key=ranks.index)
    a, b = fine_tune(seed=11)
    by_name = {name: (layout, relative) for _, name, layout, relative in found}
    assert by_name["scale"][1] == "∞ %"
    assert found[0][1] == "scale"
    for name in ("layers.0.weight", "layers.1.weight", "layers.2.weight"):
        number, unit = by_name[name][1].split()  # as the CLI and the desktop show it
        assert unit == "%"
        shown = float(number) / 100
        assert shown == pytest.approx(relative_change(a[name], b[name]), rel=5e-3), name
    assert by_name[escaped][1] == "100 %"  # 1 -> 2: ||a-b|| / ||a|| = 1
    assert by_name["head.weight"][0] == "F32 [10, 64] → F32 [12, 64]"
    assert "6 changed, 1 reshaped, 1 added, 1 removed, 2 unchanged" in page.text
    assert "Not compared per tensor (not safetensors): config.json" in page.text


def test_phone_sized_compare_page_shows_the_tensor_table(
    console: Console, tuned: str, new_page: Any
) -> None:
    page = new_page(console.viewer, viewport={"width": 390, "height": 844}, is_mobile=True)
    page.goto(tuned)
    table = page.locator("table.tensors")
    assert table.is_visible()
    first = table.locator("tbody tr").first
    assert first.locator("td.tensor").inner_text() == "scale"
    assert table.locator("tbody tr").count() == len(FINE_TUNE_CHANGES) + 1
    assert table.locator("tbody tr", has_text="<script>alert(1)</script>.weight").count() == 1
    # The page itself never scrolls sideways; the table's name and change columns are on screen.
    scroll = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(scroll) <= 0
    for cell in (first.locator("td").nth(0), first.locator("td").nth(1)):
        box = cell.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390, box
