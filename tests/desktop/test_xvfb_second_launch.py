"""The second launch after `make run` (issue 18): the app started a local server the first time
and stopped it at quit; the next plain `lmvp-desktop` starts it again and shows the models, and
the status bar never says "Up to date" while that server does not answer. Real processes: the
app on Xvfb, read through AT-SPI."""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.desktop.xdesktop import XDesktop, main_window, tree_items


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2):
            return True
    except OSError:
        return False


def test_a_second_launch_starts_the_local_server_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with XDesktop() as desktop:
        first = desktop.start_app()  # make run
        desktop.wait_for(
            lambda t: main_window(t) and {"demo", "tiny-net"} <= set(tree_items(t)),
            timeout=60,
            app=first,
            what="the demo's model in the tree",
        )
        assert first.stop() == 0
        assert not _answers(first.url), "quitting the app stops the server it started"

        second = desktop.start_app(home=first.home, port=first.port, demo=False)
        seen: list[str] = []

        def shown(tree):  # type: ignore[no-untyped-def]
            window = main_window(tree)
            if window is None:
                return None
            seen.extend(
                n.name for n in tree.find_all(role="label", name="Up to date|running|reach")
            )
            return {"demo", "tiny-net"} <= set(tree_items(tree)) and window

        started = time.monotonic()
        desktop.wait_for(shown, timeout=60, app=second, what="the window with the demo's model")
        assert _answers(second.url)
        tree = desktop.tree()
        assert tree is not None
        assert not tree.find(name="(?i)cannot reach|not running|Errno")
        assert not [s for s in seen if "not running" in s or "reach" in s], seen
        assert time.monotonic() - started < 60
        second.stop()
