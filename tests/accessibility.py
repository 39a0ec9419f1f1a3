"""An automated accessibility check for the tests: axe-core (vendored in ``tests/vendor/axe-core``)
run in Debian's Chromium through Playwright on a page, returning what it finds.

    with chromium() as browser:
        violations = axe_violations(browser, url=..., width=320)
        assert not violations, describe(violations)

The page is opened in a fresh context with the given width (320 px is the WCAG reflow width;
1280 a desktop) and colour scheme; axe-core is injected with the page's Content Security
Policy bypassed (the product's pages allow no scripts at all, rightly), and run with the WCAG
2.1 A and AA rules and axe's best practices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
AXE_VERSION = "4.14.1"
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice")


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def axe_violations(
    browser: Any,
    *,
    url: str | None = None,
    html: str | None = None,
    width: int = 1280,
    height: int = 900,
    color_scheme: str = "light",
    tags: tuple[str, ...] = TAGS,
    storage_state: Any = None,
) -> list[dict[str, Any]]:
    """axe-core's violations on ``url`` (or the page ``html``) at this width: a list of
    ``{id, impact, help, nodes: [{target, html, summary}]}``; empty when it passes. Also fails
    (as a violation ``horizontal-scroll``) when the page scrolls sideways at this width.
    ``storage_state``: cookies to open the page with (a signed-in member of staff), as
    Playwright's ``BrowserContext.storage_state()`` gives them."""
    context = browser.new_context(
        viewport={"width": width, "height": height},
        color_scheme=color_scheme,
        bypass_csp=True,
        java_script_enabled=True,
        storage_state=storage_state,
    )
    try:
        page = context.new_page()
        if url is not None:
            page.goto(url, wait_until="load")
        else:
            page.set_content(html or "", wait_until="load")
        page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
        found = page.evaluate(
            """async (tags) => {
                const result = await axe.run(document, {
                    runOnly: {type: "tag", values: tags},
                    resultTypes: ["violations"],
                });
                return result.violations.map((v) => ({
                    id: v.id,
                    impact: v.impact,
                    help: v.help,
                    nodes: v.nodes.map((n) => ({
                        target: n.target.join(" "),
                        html: n.html,
                        summary: n.failureSummary,
                    })),
                }));
            }""",
            list(tags),
        )
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        if overflow > 0:
            found.append(
                {
                    "id": "horizontal-scroll",
                    "impact": "serious",
                    "help": f"the page is {overflow}px wider than the {width}px window "
                    "(WCAG 1.4.10 reflow)",
                    "nodes": [],
                }
            )
        return found
    finally:
        context.close()


def describe(violations: list[dict[str, Any]]) -> str:
    """The violations as lines a person can act on."""
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']}")
        for node in v["nodes"][:5]:
            lines.append(f"    {node['target']}: {node['html'][:160]}")
    return "\n".join(lines)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """A WSGI app (the portal) served on a free loopback port in a thread: its base URL."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
