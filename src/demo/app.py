"""The Gradio page over a :class:`~src.demo.render.Renderer`: a prompt with the animator's concepts as
examples, a face (seed, uploaded image or latent), the motion's sliders, and the outputs (video,
frame strip, per-frame readings). Every message, bad input included, shows in the status line under
the button; the server keeps serving."""
from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Any, Callable

from src.demo.inputs import MAX_FRAMES, PROJECTION_STEPS, Request
from src.demo.render import Renderer, Result
from src.utils.errors import UserError, first_line

log = logging.getLogger("lgfa.demo")
SOURCE_LABELS = [("a seed", "seed"), ("an image", "image"), ("a latent", "latent")]
CSS = """
#status p { margin: 0; }
#status .error { color: #b42318; font-weight: 600; }
#face img { object-fit: contain; }
footer { display: none !important; }
"""


def escape(text: str) -> str:
    """``text`` shown literally in Markdown."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", text)


def error_status(message: str) -> str:
    return f'<span class="error">{escape(message)}</span>'


def guarded(fn: Callable[..., tuple], failed: tuple) -> Callable[..., tuple]:
    """``fn`` whose UserError (and any other failure) becomes ``failed`` plus its status line. It keeps
    ``fn``'s signature: Gradio hands a ``gr.Progress`` to the parameter whose default is one."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> tuple:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            return (*failed, error_status(str(e)))
        except MemoryError:
            return (*failed, error_status("Out of memory: ask for fewer frames"))
        except Exception as e:  # a bug: its traceback goes to the server's log, one line to the page
            log.exception("the demo failed on a request")
            return (*failed, error_status(f"Something went wrong ({type(e).__name__}: {first_line(e)}); "
                                          "the server's log has the details"))
    return run


def curve_frame(curve: dict | None):
    import pandas as pd

    return None if curve is None else pd.DataFrame(curve)


def build_page(renderer: Renderer, checkpoint: str = "", title: str = "Language-guided face animation"):
    """The page as a ``gr.Blocks`` (not launched); ``checkpoint`` names the animator file shown."""
    import gradio as gr
    from src.networks.animator import DECAYS

    name = Path(checkpoint).name.replace("`", "") or "loaded"
    limit = f"up to {renderer.max_upload_bytes / 2**20:g} MB"
    low, high, steps_default = PROJECTION_STEPS

    def show_face(source, seed, image, latent):
        if source in ("image", "latent") and not (image if source == "image" else latent):
            return None, f"Upload a face {source}, then press **Animate**"
        return renderer.preview(Request(source=source, seed=seed, image=image, latent=latent)), ""

    def show_upload(*face_args):  # a refused upload is cleared from its box
        shown, message = show_face(*face_args)
        return shown, gr.update(), message

    def chosen(source):
        return [gr.update(visible=source == "seed"), gr.update(visible=source == "image"),
                gr.update(visible=source == "image"), gr.update(visible=source == "latent")]

    def animate(prompt, sequence, source, seed, image, latent, steps, frames, strength, decay, fps,
                progress=gr.Progress(track_tqdm=True)):
        request = Request(prompt=prompt, sequence=sequence, source=source, seed=seed, image=image, latent=latent,
                          projection_steps=steps, frames=frames, strength=strength, decay=decay, fps=fps)
        result: Result = renderer.render(request, progress=progress)
        return (str(result.video), str(result.strip), curve_frame(result.clip), curve_frame(result.oracle),
                escape(result.message).replace("\n", "  \n"))

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as page:
        gr.Markdown(f"## {title}\nType a sentence, choose a face, press **Animate**: the face does it, frame by "
                    f"frame. Animator `{name}` on {renderer.pipeline.device}.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                prompt = gr.Textbox(label="Prompt", value=(renderer.prompts or ["The person is smiling."])[0],
                                    lines=1, max_lines=3, elem_id="prompt")
                if renderer.prompts:
                    gr.Examples([[p] for p in renderer.prompts], inputs=[prompt], example_labels=renderer.concepts,
                                examples_per_page=len(renderer.prompts), elem_id="concepts",
                                label="Concepts the animator was trained on (click one; any sentence goes)")
                sequence = gr.Textbox(label="Sequence (optional): motions played after the prompt, one after the "
                                      "other", lines=1, max_lines=3, placeholder="winking, then closing eyes",
                                      elem_id="sequence")
                with gr.Row(equal_height=False):
                    face = gr.Image(label="Input face", interactive=False, height=150, width=150, scale=0,
                                    min_width=150, elem_id="face", buttons=[])
                    with gr.Column(min_width=240):
                        source = gr.Radio(SOURCE_LABELS, value="seed", label="Face from", elem_id="source")
                        seed = gr.Number(label="Seed (each draws another face)", value=3, precision=0, minimum=0,
                                         maximum=2**32 - 1, elem_id="seed")
                        image = gr.File(label=f"Face image (.png .jpg .webp ..., {limit})", height=100,
                                        visible=False, elem_id="image-upload")
                        steps = gr.Slider(low, high, value=steps_default, step=5, visible=False, elem_id="steps",
                                          label="Projection steps (about 1 s each on a CPU)")
                        latent = gr.File(label=f"W or W+ latent (.npy .npz .pt .safetensors, {limit})", height=100,
                                         visible=False, elem_id="latent-upload")
                with gr.Row():
                    frames = gr.Slider(2, MAX_FRAMES, value=16, step=1, label="Frames per motion", elem_id="frames")
                    strength = gr.Slider(0.1, 3.0, value=1.0, step=0.1, label="Strength", elem_id="strength")
                with gr.Row():
                    decay = gr.Dropdown(list(DECAYS), value="linear", label="Decay of the steps", elem_id="decay")
                    fps = gr.Slider(1, 30, value=10, step=1, label="Frames per second", elem_id="fps")
                run = gr.Button("Animate", variant="primary", elem_id="run")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=6):
                video = gr.Video(label="Video", autoplay=True, loop=True, height=300, interactive=False,
                                 elem_id="video")
                strip = gr.Image(label="Every frame", show_label=False, type="filepath", interactive=False,
                                 elem_id="strip")
                with gr.Row():
                    plot = dict(x="frame", y="value", color="series", x_title="frame", height=220)
                    clip_plot = gr.LinePlot(title="CLIP similarity to each prompt", color_title="prompt",
                                            y_title="cosine", elem_id="clip-plot", **plot)
                    oracle_plot = gr.LinePlot(title="Oracle: reach toward the concept", color_title="concept",
                                              y_title="reach (1 = target)", elem_id="oracle-plot",
                                              visible=renderer.oracle is not None, **plot)

        face_inputs = [source, seed, image, latent]
        preview = dict(fn=guarded(show_face, (None,)), inputs=face_inputs, outputs=[face, status],
                       concurrency_id="pipeline", show_progress="hidden")
        page.load(**preview)
        seed.change(**preview, trigger_mode="always_last")
        source.change(chosen, inputs=[source], outputs=[seed, image, steps, latent], queue=False,
                      show_progress="hidden")
        source.input(**preview)
        for upload in (image, latent):
            upload.upload(guarded(show_upload, (None, None)), inputs=face_inputs, outputs=[face, upload, status],
                          concurrency_id="pipeline", show_progress="hidden")
            upload.clear(**preview)
        inputs = [prompt, sequence, source, seed, image, latent, steps, frames, strength, decay, fps]
        outputs = [video, strip, clip_plot, oracle_plot, status]
        for trigger in (run.click, prompt.submit, sequence.submit):
            trigger(guarded(animate, (None, None, None, None)), inputs=inputs, outputs=outputs,
                    concurrency_id="pipeline")
    return page
