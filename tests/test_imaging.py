"""Medical imaging through the gateway with the real servers, and the web viewer in headless Chromium.

List the studies → open one → its report arrives as a document → its key image arrives as a PNG →
the viewer link opens in a real browser (Debian's chromium driven by Playwright) and shows the
image, scrolling through the series. Without a study, the assistant says so. (Issue 4.)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from tests.support import DSP, SECRETS, Chat, logged_in

pytestmark = pytest.mark.services

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGING = {"fr": "je veux voir mes radios et le rapport du scanner",
           "en": "I want to see my scan images and the report"}


def said(services, chat: Chat, last: int) -> list[str]:
    """Names of the last responses of the conversation."""
    return services.rasa.responses(chat.id)[-last:]


def import_dicom(services, matricule: str, *files: Path, report: Path | None = None) -> dict:
    """Run `dsp import-dicom` for a patient and return its JSON output."""
    extra = ["--report", str(report)] if report else []
    out = subprocess.run([str(DSP), "import-dicom", *map(str, files), "--matricule", matricule, *extra],
                         capture_output=True, text=True, env=services.env, timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("language", ["fr", "en"])
def test_no_study_is_said(services, language):
    chat, _ = logged_in(services, language)
    chat.say(IMAGING[language])
    assert said(services, chat, 1) == ["utter_no_studies"]


def test_studies_report_key_image_and_viewer_in_a_browser(services, tmp_path):
    from playwright.sync_api import sync_playwright

    chat, patient = logged_in(services, "fr")
    report = tmp_path / "compte-rendu.txt"
    report.write_text("Scanner thoracique : pas d'anomalie décelée.", encoding="utf-8")
    result = import_dicom(services, patient["matricule"], Path(get_testdata_file("CT_small.dcm")), report=report)
    assert result["studies"] == 1 and not result["refused"], result

    chat.say(IMAGING["fr"])
    assert said(services, chat, 1) == ["utter_studies_list"]
    assert "Scanner (CT)" in chat.text  # modality in words, filled in by the gateway
    study_button = next(b for b in chat.buttons if "study_id" in b["payload"])
    chat.choose(study_button["payload"])
    names = said(services, chat, 4)
    assert names[0] == "utter_study_header" and names[1] == "utter_study_report", names
    assert "utter_key_image" in names and names[-1] == "utter_viewer_link"
    assert "[[study]]" not in chat.text

    report_file = next(m["file"] for m in chat.last if m.get("file"))
    assert chat.download(report_file["url"]).content == report.read_bytes()
    image_url = next(m["image"] for m in chat.last if m.get("image"))
    image = chat.download(image_url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(PNG_SIGNATURE)

    viewer_url = next(word for m in chat.last for word in (m.get("text") or "").split() if "/viewer/" in word)
    assert viewer_url.startswith(services.gateway_url)
    SECRETS.add(viewer_url.rstrip("/").rsplit("/", 1)[-1])  # a capability: never in a log
    assert httpx.get(viewer_url.replace("/viewer/", "/viewer/x"), timeout=30).status_code == 404  # forged
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(viewer_url)
            frame = page.locator("img.frame").first
            frame.wait_for(state="visible", timeout=30_000)
            page.wait_for_function("document.querySelector('img.frame').complete && "
                                   "document.querySelector('img.frame').naturalWidth > 0", timeout=30_000)
            assert page.locator(".series").count() >= 1
            page.locator("button.next").first.click()  # scrolling within the series keeps working
            assert page.locator(".index").first.inner_text() in {"1", "2"}
            page.screenshot(path=str(tmp_path / "viewer.png"))
        finally:
            browser.close()
    assert (tmp_path / "viewer.png").stat().st_size > 0

    # The link dies with the session.
    chat.say("je veux me déconnecter")
    assert httpx.get(viewer_url, timeout=30).status_code == 404
    tracker = json.dumps(services.rasa.tracker(chat.id))
    assert "CompressedSamples" not in tracker and "thoracique" not in tracker  # header values, report text
