"""The local web demo (``python demo.py``): a sentence and a face in; the video, its labelled frame
strip and per-frame readings out.

* ``settings.py``  the ``demo.*`` keys: their help, their checks
* ``inputs.py``    what a visitor sends, checked: prompt, face (seed, image, latent), motion values
* ``readings.py``  per-frame readings of a video: CLIP similarity to each prompt, the oracle's reach
* ``render.py``    :class:`Renderer`: the pipeline loaded once; inputs -> video, strip, readings
* ``app.py``       the Gradio page over a Renderer
* ``server.py``    serve(cfg): load, build, queue and launch (analytics and share links off)

Only ``app.py`` and ``server.py`` import Gradio; the rest runs (and is tested) without it.
"""
