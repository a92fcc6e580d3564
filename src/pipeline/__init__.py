"""Inference apart from training: ``FaceAnimator.from_pretrained(path)(face, text)`` -> frames."""
from src.pipeline.face_animator import FaceAnimator

__all__ = ["FaceAnimator"]
