"""Identity: the networks that recognise a face, the crops they need, the drift metrics built on them
and the identity-keeping projection of W+ offsets.

* ``irse50``: IR-SE50 (ArcFace) and its loader; ``arcface``: its FFHQ crop, as a differentiable loss
  network and as a batched metric embedder; ``dlib``: dlib's ResNet descriptor (metric only).
* ``reader``: an identity-attribute reader (the embedded domain's identity parameters read back).
* ``build``: the identity-loss network and the metric embedder of a domain config, by kind.
* ``metrics``: drift to the first frame and ACD on embeddings; ``projection``: offsets without their
  first-order effect on an identity reader's readings.
"""
