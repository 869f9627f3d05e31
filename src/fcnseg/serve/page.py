"""The Gradio page of ``fcnseg serve`` and its ``/segment`` API endpoint.

Imported only by the serve command (gradio is heavy and optional). The work of a request is
in :mod:`fcnseg.serve.segmenter`; this module lays out the page and wires its events:

- upload, example click, model or CRF change, "Segment": read, segment, show the overlay, the
  legend (classes present, their colours and shares), the timing, and offer two downloads
  (palette PNG, overlay); a bad upload shows one line naming the problem and the fix;
- opacity slider: re-blend from the palette PNG already made (no second inference);
- ``/segment`` (for ``gradio_client``): an image -> its palette PNG.

Events with preprocess=False receive uploads as Gradio's raw file dicts, so a non-image or a
decompression bomb reaches :func:`~fcnseg.serve.segmenter.read_upload` (and its clear
message) instead of failing inside Gradio's own image decoding. All model-running events
and re-blending events share one concurrency group: at most ``concurrency`` of them run at
once, the rest wait in Gradio's bounded queue.
"""
from __future__ import annotations

import html
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gradio as gr
import numpy as np
from gradio.data_classes import FileData

from fcnseg.data.image_files import read_mask
from fcnseg.errors import FcnsegError
from fcnseg.serve import segmenter
from fcnseg.serve.segmenter import ServedModel

# Every event that decodes or segments an image: at most `concurrency` of them run at once.
WORK_GROUP = "fcnseg-work"
CSS = """
#fcnseg-input img, #fcnseg-overlay img {width: 100%; height: 100%; object-fit: contain}
#fcnseg-status .fcnseg-error {color: #b00020; font-weight: 600; padding: 0.4em 0.6em;
  border: 1px solid #b00020; border-radius: 6px; background: #fff4f4}
.fcnseg-legend table {border-collapse: collapse; width: 100%}
.fcnseg-legend td {padding: 2px 8px; border-bottom: 1px solid #ddd}
.fcnseg-legend td.share {text-align: right; font-variant-numeric: tabular-nums}
.fcnseg-swatch {display: inline-block; width: 1em; height: 1em; border: 1px solid #333;
  vertical-align: middle; margin-right: 0.3em}
"""


@dataclass
class PageConfig:
    """Settings of the page (from the command line)."""

    max_pixels: int = segmenter.DEFAULT_MAX_PIXELS
    alpha: float = 0.5          # initial overlay opacity
    concurrency: int = 1        # inferences at once (each already uses all cores)


def build_page(models: Sequence[ServedModel], scratch: segmenter.Scratch,
               config: PageConfig | None = None) -> gr.Blocks:
    """The page (a ``gr.Blocks``, not yet queued or launched) serving ``models``."""
    config = config or PageConfig()
    handlers = _Handlers(list(models), scratch, config, segmenter.crf_available())
    names = [m.name for m in models]
    examples = segmenter.make_examples(scratch.root / "examples", models[0].class_names)
    with gr.Blocks(title="fcnseg serve", analytics_enabled=False,
                   delete_cache=(600, 3600)) as page:
        gr.Markdown("# fcnseg: semantic segmentation\nDrop a photo (or pick an example): a Fully "
                    "Convolutional Network labels every pixel.")
        with gr.Row():
            with gr.Column(scale=1):
                model_dd = gr.Dropdown(choices=names, value=names[0], label="Model",
                                       visible=len(names) > 1, elem_id="fcnseg-model")
                model_info = gr.HTML(_model_html(models[0]), elem_id="fcnseg-model-info")
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Photo",
                                 elem_id="fcnseg-input", height=360)
                example_set = gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples",
                                          elem_id="fcnseg-examples", api_visibility="private")
                alpha = gr.Slider(0.0, 1.0, value=config.alpha, step=0.05, label="Overlay opacity",
                                  elem_id="fcnseg-alpha")
                crf = gr.Checkbox(False, label="Refine with a dense CRF (sharper edges, slower)",
                                  visible=handlers.crf_ok, elem_id="fcnseg-crf")
                run_btn = gr.Button("Segment", variant="primary", elem_id="fcnseg-run")
            with gr.Column(scale=1):
                status = gr.HTML("", elem_id="fcnseg-status")
                overlay = gr.Image(label="Overlay", interactive=False, format="png",
                                   elem_id="fcnseg-overlay", height=360)
                legend = gr.HTML("", elem_id="fcnseg-legend")
                timing = gr.HTML("", elem_id="fcnseg-timing")
                with gr.Row():
                    labels_dl = gr.DownloadButton("Download labels (palette PNG)", visible=False,
                                                  elem_id="fcnseg-download-labels")
                    overlay_dl = gr.DownloadButton("Download overlay (PNG)", visible=False,
                                                   elem_id="fcnseg-download-overlay")

        run_inputs = [image, model_dd, alpha, crf]
        run_outputs = [overlay, legend, timing, labels_dl, overlay_dl, status]
        common = dict(preprocess=False, concurrency_id=WORK_GROUP,
                      concurrency_limit=config.concurrency, api_visibility="private")
        # upload, not change: change also fires when the component re-sets its own value
        for event in (image.upload, run_btn.click, crf.change):
            event(handlers.run, run_inputs, run_outputs, **common)
        example_set.load_input_event.then(handlers.run, run_inputs, run_outputs, **common)
        image.clear(lambda: _cleared(""), None, run_outputs, queue=False, api_visibility="private")
        model_dd.change(handlers.model_html, [model_dd], [model_info], api_visibility="private",
                        queue=False).then(handlers.run, run_inputs, run_outputs, **common)
        alpha.release(handlers.reblend, [image, labels_dl, model_dd, alpha], [overlay, overlay_dl, status],
                      **common)
        gr.api(handlers.api_segment, api_name="segment", concurrency_id=WORK_GROUP,
               concurrency_limit=config.concurrency)
    return page


class _Handlers:
    """The page's event functions (they run in Gradio's worker threads)."""

    def __init__(self, models: list[ServedModel], scratch: segmenter.Scratch, config: PageConfig,
                 crf_ok: bool):
        self.models = {m.name: m for m in models}
        self.default = models[0]
        self.scratch = scratch
        self.config = config
        self.crf_ok = crf_ok

    def model(self, name: str | None) -> ServedModel:
        if not name:
            return self.default
        if name not in self.models:
            raise FcnsegError(f"unknown model {name!r}; choose one of {', '.join(self.models)}")
        return self.models[name]

    def model_html(self, name: str) -> str:
        return _model_html(self.model(name))

    def _read(self, upload: Any) -> tuple[np.ndarray, str]:
        path, name = _upload_path(upload)
        return segmenter.read_upload(path, name, self.config.max_pixels), name

    def run(self, upload: Any, model_name: str, alpha: float, crf: bool):
        """Segment the upload; returns overlay, legend, timing, two downloads and the status line."""
        t0 = time.perf_counter()
        if upload is None:  # the photo was cleared: clear the results too
            return _cleared("")
        try:
            model = self.model(model_name)
            image, name = self._read(upload)
            seg = segmenter.segment(model, image, crf=bool(crf) and self.crf_ok)
            folder, stem = self.scratch.new(), segmenter.upload_stem(name)
            labels_png = segmenter.write_labels(seg.labels, model, folder / f"{stem}_labels.png")
            overlay_png = segmenter.write_overlay(image, seg.labels, model, float(alpha),
                                                  folder / f"{stem}_overlay.png")
            shown = segmenter.preview(image, seg.labels, model, float(alpha))
        except (FcnsegError, MemoryError) as e:
            return _cleared(_error_html(e))
        except Exception as e:  # noqa: BLE001 - a bug: say so on the page, keep serving
            traceback.print_exc(file=sys.stderr)
            return _cleared(_error_html(RuntimeError(
                f"fcnseg serve failed on this image ({type(e).__name__}: {e}); this is a bug, "
                f"please report it with the image")))
        h, w = image.shape[:2]
        how = "whole image" if seg.tiling is None else f"tiles of {seg.tiling[0]} px"
        timing = (f"<b>{html.escape(model.name)}</b> segmented {w}x{h} px ({how}"
                  f"{', dense CRF' if seg.crf else ''}) in <b>{1000 * seg.seconds:.0f} ms</b>; "
                  f"request {1000 * (time.perf_counter() - t0):.0f} ms")
        return (shown, _legend_html(seg.labels, model), timing,
                gr.update(value=str(labels_png), visible=True),
                gr.update(value=str(overlay_png), visible=True), "")

    def reblend(self, upload: Any, labels_file: Any, model_name: str, alpha: float):
        """New opacity: blend the photo with the labels already computed (no inference)."""
        if upload is None or not labels_file:
            return gr.update(), gr.update(), gr.update()
        try:
            model = self.model(model_name)
            image, name = self._read(upload)
            labels = read_mask(_upload_path(labels_file)[0], model.num_classes)
            if labels.shape != image.shape[:2]:  # a newer photo is being segmented
                return gr.update(), gr.update(), gr.update()
            folder = self.scratch.new()
            overlay_png = segmenter.write_overlay(image, labels, model, float(alpha),
                                                  folder / f"{segmenter.upload_stem(name)}_overlay.png")
            return (segmenter.preview(image, labels, model, float(alpha)),
                    gr.update(value=str(overlay_png), visible=True), "")
        except (FcnsegError, MemoryError) as e:
            return gr.update(), gr.update(), _error_html(e)

    def api_segment(self, image: FileData, model: str = "", crf: bool = False) -> FileData:
        """Segment one image; returns its labels as a palette PNG (one class index per pixel,
        the model's colours), the same file as the page's "Download labels" and `fcnseg predict`.
        `model`: a name from the page's model picker (default: the first); `crf`: dense-CRF
        refinement (needs pydensecrf2 on the server)."""
        try:
            served = self.model(model)
            if crf and not self.crf_ok:
                raise FcnsegError("crf=True needs pydensecrf2 on the server: pip install pydensecrf2")
            array, name = self._read(image)
            seg = segmenter.segment(served, array, crf=bool(crf))
            stem = segmenter.upload_stem(name)
            path = segmenter.write_labels(seg.labels, served, self.scratch.new() / f"{stem}_labels.png")
        except (FcnsegError, MemoryError) as e:
            raise gr.Error(_message(e), print_exception=False) from None
        return FileData(path=str(path), orig_name=path.name)


def _upload_path(upload: Any) -> tuple[str, str]:
    """(server path, the user's file name) of a Gradio file value (dict, FileData or path)."""
    if isinstance(upload, dict):
        path, name = upload.get("path"), upload.get("orig_name")
    elif isinstance(upload, FileData):
        path, name = upload.path, upload.orig_name
    else:
        path, name = upload, None
    if not path:
        raise FcnsegError("no image arrived; upload or drop a photo (JPEG, PNG, WebP, ...)")
    return str(path), name or Path(str(path)).name


def _message(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return (f"not enough memory for this image ({e or 'MemoryError'}); try a smaller one, or "
                f"restart fcnseg serve with a lower --max-pixels")
    return str(e)


def _error_html(e: BaseException) -> str:
    return f'<div class="fcnseg-error" role="alert">{html.escape(_message(e))}</div>'


def _cleared(status: str):
    """Outputs when there is no result: nothing shown, downloads hidden, ``status`` line."""
    return (None, "", "", gr.update(value=None, visible=False),
            gr.update(value=None, visible=False), status)


def _swatch(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return f'<span class="fcnseg-swatch" style="background: rgb({r}, {g}, {b})"></span>'


def _model_html(model: ServedModel) -> str:
    classes = " ".join(f'<span class="fcnseg-class">{_swatch(model.palette[c])}{html.escape(n)}</span>'
                       for c, n in enumerate(model.class_names))
    return (f'<div class="fcnseg-model"><b>{html.escape(model.name)}</b>: '
            f'{html.escape(model.description)}. {model.num_classes} classes: {classes}</div>')


def _legend_html(labels, model: ServedModel) -> str:
    """The classes present, largest first: colour, name and the share of the image."""
    rows = "".join(
        f'<tr data-class="{c}"><td>{_swatch(model.palette[c])}{html.escape(model.class_names[c])}</td>'
        f'<td class="share">{100 * share:.1f}%</td></tr>'
        for c, share in segmenter.class_shares(labels))
    return f'<div class="fcnseg-legend"><table>{rows}</table></div>'
