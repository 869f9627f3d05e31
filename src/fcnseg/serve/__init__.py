"""``fcnseg serve``: a web page (Gradio) that segments uploaded photos, and an API endpoint.

- :mod:`fcnseg.serve.segmenter`: what a request does, without Gradio: the loaded models
  (one prepared runner each, reused by every request), upload checks, segmentation through
  :func:`fcnseg.infer.segment.segment_array` (the code path of ``fcnseg predict`` and
  :func:`fcnseg.segment`), the legend's class shares, and the files offered for download;
- :mod:`fcnseg.serve.page`: the Gradio page and the ``/segment`` API endpoint (imports gradio);
- :mod:`fcnseg.serve.cli`: the command (gradio is imported only when it runs).

Gradio is an optional dependency: ``pip install 'fcnseg[serve]'``.
"""
