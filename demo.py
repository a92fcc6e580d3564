"""A local web page to try the animator: type a sentence, choose a face, watch it move.

    pip install -r requirements-demo.txt                # gradio (and selenium for the browser test)
    python demo.py                                      # the embedded default on http://127.0.0.1:7860
    python demo.py demo.port=8080 demo.host=0.0.0.0     # another port, reachable from other machines
    python demo.py demo.checkpoint=logs/animator/runs/my-exp/animator.safetensors demo.device=cuda

The page takes a prompt (the animator's concepts are listed as examples), optional motions played
after it ("winking, then closing eyes"), a face (the generator's face of a seed, an uploaded image,
projected into the generator first, or an uploaded W / W+ latent), the frames, strength, decay and
fps of the motion. It shows the video, every frame in a labelled strip, and per-frame readings: the
CLIP similarity of each frame to each prompt and, on the embedded domain, the attribute oracle's
reach toward each concept. Requests are queued (one renders at a time); bad input shows one line
on the page. Arguments are key=value (conf/demo.yaml); a bad one ends with one line `error: ...`
and exit code 2. Nothing is sent anywhere: analytics and share links are off.
"""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from src.config.cli import run_command
    from src.demo.settings import check_keys, settings_help
    from src.utils.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip() + "\n\nKeys (key=default, conf/demo.yaml):\n" + settings_help())
        return 0
    try:
        check_keys(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def serve(cfg) -> str:
        from src.demo.server import serve as serve_page

        return serve_page(cfg)

    return run_command("demo", argv, __doc__, serve)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # a render still running in a server thread when Ctrl-C / SIGTERM stopped the page ends with the
    # process here (interpreter shutdown would abort it mid-computation); nothing is left to clean up
    os._exit(code)
