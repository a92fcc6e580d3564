"""``serve(cfg)``: load the pipeline once, build the page, queue its requests and serve it on
``demo.host:demo.port`` until Ctrl-C or SIGTERM. Nothing leaves the machine: Gradio's analytics and
version check are off, no share link is made, the page's fonts are the system's."""
from __future__ import annotations

import os
import signal

from src.utils.errors import UserError, first_line


def _stop_on_sigterm() -> None:
    """SIGTERM stops the server as Ctrl-C does (its temporary outputs are removed on the way out)."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, stop)


def theme():
    import gradio as gr

    sans = ["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Default(primary_hue="indigo", spacing_size="sm", radius_size="sm", font=sans, font_mono=mono)


def queued_page(renderer, settings):
    """The page, its requests queued: one renders at a time, ``settings.queue_size`` wait, more are turned
    away (Gradio tells the visitor the queue is full)."""
    from src.demo.app import build_page

    return build_page(renderer, settings.checkpoint).queue(max_size=settings.queue_size, default_concurrency_limit=1)


def serve(cfg) -> str:
    """Serve the demo the composed ``conf/demo.yaml`` describes; returns the line printed once it stops."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported
    from src.demo.render import Renderer
    from src.demo.settings import check_settings

    settings = check_settings(cfg.demo)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demo needs gradio: pip install -r requirements-demo.txt") from None
    from src.demo.app import CSS

    renderer = Renderer.load(settings, cfg.paths.assets)
    try:
        page = queued_page(renderer, settings)
        _stop_on_sigterm()
        url = f"http://{settings.host}:{settings.port}"
        print(f"serving the demo on {url} (Ctrl-C stops it)", flush=True)
        try:
            page.launch(server_name=settings.host, server_port=settings.port, share=False, quiet=True,
                        show_error=False, max_file_size=settings.max_upload_bytes, ssr_mode=False,
                        mcp_server=False, pwa=False, allowed_paths=[str(renderer.outputs)], theme=theme(),
                        css=CSS)
        except OSError as e:
            raise UserError(f"cannot serve on {settings.host}:{settings.port}: {first_line(e)} "
                            "(choose another demo.port= or demo.host=)") from None
    finally:
        renderer.close()
    return "the demo stopped"
