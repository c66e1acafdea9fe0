"""Headless Chromium looks at the status page and the notes app, sees a
note written through another node appear on the open board (server-sent
events), and watches the status page report a new leader after the leader
is SIGKILLed.

Screenshots go to artifacts/screenshots/ (git-ignored). Needs the Debian
package ``chromium``; skipped, saying so, where it is absent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.needs import not_installed
from tests.server.procs import ProcessCluster
from tests.web.browser import Browser, Page, find_chromium
from tests.web.conftest import ARTIFACTS, post_form, roles

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason=not_installed("chromium, for the headless browser test", "apt-get install -y chromium"),
)

NOTES = [
    ("Raft reading group", "Thursday 18:00, room 2. Chapter 6: client interaction.", "ana"),
    ("Release checklist", "Tag, build the image, roll the StatefulSet one pod at a time.", "ops"),
    ("Lunch", "Noodles place on the corner?", ""),
    ("Snapshot sizes", "The 1M-key snapshot is 23 MB and loads in under a second.", "bo"),
]


async def role_and_leader(page: Page) -> tuple[str, str]:
    return await page.text("#role"), await page.text("#leader")


async def run(cluster: ProcessCluster, profile: Path) -> None:
    async with Browser.launch(profile) as browser:
        # Roles read once Chromium has started: its start loads this 2-core
        # machine enough to start an election now and then.
        leader, followers = roles(cluster)
        watcher = followers[0]
        base = f"http://{cluster.http[watcher]}"
        status = await browser.new_page()
        await status.goto(f"{base}/")
        await status.wait_for(
            "document.querySelectorAll('#members tr').length === 3"
            " && !document.querySelector('#members').innerText.includes('\\u2013\\t')"
        )
        assert await role_and_leader(status) == ("FOLLOWER", leader)
        assert await status.text("#node-id") == watcher
        members = await status.text("#members")
        for node_id in cluster.ids:
            assert node_id in members
        assert "(this node)" in members and "leader" in members
        assert leader in await status.text("#changes")
        assert "Notes board" in await status.text("#app-link")
        # The board's job runs on the leader; a follower's page says where.
        assert f"archive_old_notes\tthe leader ({leader})" in await status.text("#jobs")
        await status.screenshot(ARTIFACTS / "status.png")

        app = await browser.new_page()
        await app.goto(f"{base}/app/")
        assert f"{len(NOTES)} notes" in await app.text("main h2")
        assert "Raft reading group" in await app.text("ul.notes")
        assert "pinned" in await app.text("li.note.pinned")
        assert f"served by node {watcher} (follower)" in await app.text("footer")
        await app.screenshot(ARTIFACTS / "app-index.png")
        # A note written through the form on a follower: forwarded, applied,
        # and shown by the page the form redirects to.
        await app.submit_form(
            "form[action='/app/notes']",
            {"title": "Written in the browser", "body": "via a follower", "author": "chromium"},
        )
        assert await app.evaluate("location.pathname.startsWith('/app/notes/')")
        assert await app.text("article h2") == "Written in the browser"
        assert "chromium" in await app.text("article .meta")
        await app.screenshot(ARTIFACTS / "app-note.png")
        await app.goto(f"{base}/app/")
        assert f"{len(NOTES) + 1} notes" in await app.text("main h2")

        # Live: a note written through another node appears on the open page
        # (its server-sent events), without a reload (the marker survives).
        await app.evaluate("window.notReloaded = true")
        reply = await asyncio.to_thread(
            post_form,
            cluster.http[leader],
            "/app/notes",
            {"title": "Written on the leader", "body": "pushed live", "author": "curl"},
        )
        assert reply.status == 303
        await app.wait_for(
            "document.querySelector('#board').innerText.includes('Written on the leader')"
        )
        assert await app.evaluate("window.notReloaded === true")
        assert f"{len(NOTES) + 2} notes" in await app.text("main h2")
        await app.screenshot(ARTIFACTS / "app-live.png")

        # Kill the leader; the open status page (it polls) shows the new one.
        await asyncio.to_thread(cluster.kill, leader)
        new_leader = await status.wait_for(
            f"""(() => {{
              const leader = document.querySelector('#leader').innerText;
              const first = document.querySelector('#changes tr');
              return leader !== {json.dumps(leader)} && leader !== 'none'
                && first && first.innerText.includes(leader) ? leader : null;
            }})()""",
            timeout=20,
        )
        assert new_leader in followers
        changes = await status.text("#changes")
        assert leader in changes and new_leader in changes
        await status.wait_for(
            "document.querySelector('#members').innerText.includes('unreachable')", timeout=15
        )
        await status.screenshot(ARTIFACTS / "status-after-failover.png")


def test_status_page_and_notes_app_in_a_browser(
    app_cluster: ProcessCluster, tmp_path: Path
) -> None:
    leader, _ = roles(app_cluster)
    for title, body, author in NOTES:
        reply = post_form(
            app_cluster.http[leader], "/app/notes", {"title": title, "body": body, "author": author}
        )
        assert reply.status == 303
    assert post_form(app_cluster.http[leader], "/app/notes/2/pin", {"pinned": "1"}).status == 303
    asyncio.run(run(app_cluster, tmp_path / "chromium-profile"))
    for name in ("status", "app-index", "app-note", "app-live", "status-after-failover"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
