"""The web viewer of one imaging study, opened from the link the assistant gives in the chat.

Quick guide, « Accès à l'imagerie médicale »: the app opens a web viewer on the study's images. Here
the link is ``/viewer/<token>``: a signed token (ids only) that expires after 30 minutes and names
the conversation it was made for. Every page and every image re-checks that conversation's record
context in the DSP domain layer — a live login, and for an assistant a designation still in force
— so the link works for the patient (or their assistant) only while they are logged in, and
every view is audited. The page shows each series with scrolling (buttons, slider, arrow keys and
the mouse wheel); images are PNG rendered by :mod:`bot.dsp.imaging`.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
from typing import Any

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response

from bot.dsp import DspError, UnitOfWork, imaging
from bot.gateway import messages, views

logger = logging.getLogger("bot.gateway.viewer")
router = APIRouter()

#: Largest side of an image in the viewer, in pixels.
VIEWER_MAX_SIZE = 1024
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _in_uow(function: Any, *args: Any, **kwargs: Any) -> Any:
    with UnitOfWork() as uow:
        try:
            return function(uow, *args, **kwargs)
        finally:
            uow.commit()  # audit rows, refusals included


def _gone(language: str) -> HTMLResponse:
    text = html.escape(messages.imaging("viewer_gone", language))
    return HTMLResponse(f"<!doctype html><html lang=\"{language}\"><meta charset=\"utf-8\"><title>MyDSP</title>"
                        f"<body><p>{text}</p></body></html>", status_code=404, headers=SECURITY_HEADERS)


def page(detail: imaging.StudyDetail, token: str, language: str, nonce: str) -> str:
    """Return the viewer's HTML for a study: one scrollable panel per series."""
    title = html.escape(views.study_in_words(detail.study, language))
    words = {key: html.escape(messages.imaging(key, language)) for key in ("series", "image", "previous", "next",
                                                                           "not_renderable")}
    panels = []
    for number, series in enumerate(detail.series, start=1):
        frames = [{"src": f"/viewer/{token}/instances/{image.id}.png", "ok": image.renderable}
                  for image in series.instances]
        if not frames:
            continue
        label = html.escape(" — ".join(part for part in (f"{words['series']} {number}",
                                                         messages.modality(series.modality, language),
                                                         series.description) if part))
        panels.append(
            f'<section class="series" data-frames="{html.escape(json.dumps(frames))}">'
            f"<h2>{label}</h2>"
            f'<img alt="{words["image"]}" class="frame">'
            f'<p class="missing" hidden>{words["not_renderable"]}</p>'
            f'<div class="controls"><button type="button" class="prev">{words["previous"]}</button>'
            f'<input type="range" class="slider" min="1" max="{len(frames)}" value="1" aria-label="{words["image"]}">'
            f'<button type="button" class="next">{words["next"]}</button>'
            f'<span class="position">{words["image"]} <b class="index">1</b> / {len(frames)}</span></div>'
            "</section>"
        )
    script = """
for (const panel of document.querySelectorAll('.series')) {
  const frames = JSON.parse(panel.dataset.frames);
  const img = panel.querySelector('.frame'), slider = panel.querySelector('.slider');
  const missing = panel.querySelector('.missing'), index = panel.querySelector('.index');
  let at = 0;
  const show = (k) => {
    at = Math.max(0, Math.min(frames.length - 1, k));
    slider.value = at + 1; index.textContent = at + 1;
    img.hidden = !frames[at].ok; missing.hidden = frames[at].ok;
    if (frames[at].ok) img.src = frames[at].src;
  };
  panel.querySelector('.prev').addEventListener('click', () => show(at - 1));
  panel.querySelector('.next').addEventListener('click', () => show(at + 1));
  slider.addEventListener('input', () => show(slider.value - 1));
  panel.addEventListener('wheel', (e) => { e.preventDefault(); show(at + Math.sign(e.deltaY)); });
  panel.tabIndex = 0;
  panel.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowRight' || e.key === 'ArrowDown') show(at + 1);
    if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') show(at - 1);
  });
  show(Math.floor((frames.length - 1) / 2));
}
"""
    return (
        f'<!doctype html><html lang="{language}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style nonce=\"{nonce}\">"
        "body{font-family:system-ui,sans-serif;background:#111;color:#eee;margin:1rem}"
        "img.frame{max-width:100%;height:auto;display:block;background:#000}"
        ".controls{display:flex;gap:.5rem;align-items:center;margin:.5rem 0 2rem}"
        ".slider{flex:1}</style></head>"
        f"<body><h1>{title}</h1>{''.join(panels)}<script nonce=\"{nonce}\">{script}</script></body></html>"
    )


@router.get("/viewer/{token}", response_class=HTMLResponse, include_in_schema=False)
async def viewer(token: str = Path(max_length=600)) -> HTMLResponse:
    """The viewer page of the study named by the token (audited as an opening of the study)."""
    claims = views.unseal("viewer", token)
    language = str((claims or {}).get("l") or "fr")
    if claims is None:
        return _gone(language)
    try:
        detail = await asyncio.to_thread(_in_uow, imaging.open_study, str(claims["c"]), int(claims["s"]))
    except (DspError, KeyError, ValueError) as error:
        logger.info("viewer refused: %s", getattr(error, "code", type(error).__name__))
        return _gone(language)
    nonce = secrets.token_urlsafe(16)
    headers = dict(SECURITY_HEADERS)
    headers["Content-Security-Policy"] = (f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; "
                                          f"script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'")
    return HTMLResponse(page(detail, token, language, nonce), headers=headers)


@router.get("/viewer/{token}/instances/{instance_id}.png", include_in_schema=False)
async def viewer_image(instance_id: int, token: str = Path(max_length=600)) -> Response:
    """One image of the study as PNG (audited), for the page above."""
    claims = views.unseal("viewer", token)
    if claims is None:
        return Response(status_code=404, headers=SECURITY_HEADERS)
    try:
        rendered = await asyncio.to_thread(_in_uow, imaging.render_instance, str(claims["c"]), instance_id,
                                           max_size=VIEWER_MAX_SIZE)
    except (DspError, KeyError, ValueError) as error:
        logger.info("viewer image refused: %s", getattr(error, "code", type(error).__name__))
        return Response(status_code=404, headers=SECURITY_HEADERS)
    return Response(rendered.png, media_type="image/png", headers=SECURITY_HEADERS)
