"""The built book in a real browser: every slider switches frames without a kernel, and pages are clean."""

import pytest

from pages import chapter_pages, check_page

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("path", chapter_pages())
def test_chapter_sliders_switch_frames(site, browser, path):
    report = check_page(browser, site, path)
    assert report.n_explorers >= 1, f"{path}: no explorer rendered in the static page"
    assert not report.unchanged_sliders, f"{path}: sliders that did not change the frame: {report.unchanged_sliders}"
    assert not report.errors, f"{path}: {report.errors}"
    assert not report.outside_requests, f"{path}: requests that leave the book (CDN?): {report.outside_requests}"


@pytest.mark.parametrize("path", ["intro.html", "scoreboard.html"])
def test_other_pages_are_clean(site, browser, path):
    report = check_page(browser, site, path)
    assert not report.errors, f"{path}: {report.errors}"
    assert not report.outside_requests, f"{path}: requests that leave the book (CDN?): {report.outside_requests}"
