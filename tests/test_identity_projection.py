"""Identity-keeping projection of W+ offsets: the Jacobian through a render, and the null-space projection."""
from __future__ import annotations

import pytest
import torch

from src.identity.projection import identity_jacobian, project_offsets
from src.utils.errors import UserError


def _linear_world(n=3, L=4, C=5, A=3, seed=0):
    """render: ws [M,L,C] -> 'images' [M,3,2,2] linear in ws; reader: images -> [M,A] linear; J = R @ M."""
    g = torch.Generator().manual_seed(seed)
    Mx = torch.randn(12, L * C, generator=g)
    R = torch.randn(A, 12, generator=g)
    render = lambda ws: (ws.reshape(ws.shape[0], -1) @ Mx.T).view(-1, 3, 2, 2)
    reader = lambda img: img.reshape(img.shape[0], -1) @ R.T
    w = torch.randn(n, L, C, generator=g)
    return render, reader, w, R @ Mx


def test_jacobian_of_a_linear_world_is_exact_and_masked_by_layer():
    render, reader, w, J = _linear_world()
    jac, _ = identity_jacobian(render, reader, w, chunk=2)  # chunking must not change the result
    assert jac.shape == (3, 3, 20)
    assert torch.allclose(jac, J.expand(3, 3, 20), atol=1e-5)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(4, 1)
    jm = identity_jacobian(render, reader, w, layer_mask=mask)[0].view(3, 3, 4, 5)
    assert torch.equal(jm[:, :, 1], torch.zeros(3, 3, 5)) and torch.allclose(jm[:, :, 0], J.view(3, 4, 5)[:, 0].expand(3, 3, 5), atol=1e-5)
    with pytest.raises(UserError):
        identity_jacobian(render, reader, w[0])


def test_projection_leaves_the_readings_unchanged_and_keeps_the_rest():
    render, reader, w, J = _linear_world()
    jac, _ = identity_jacobian(render, reader, w)
    off = torch.randn(3, 6, 4, 5, generator=torch.Generator().manual_seed(1))
    out = project_offsets(off, jac, strength=1.0, ridge=1e-9)
    change = out.reshape(3, 6, -1) @ J.T                                  # first-order reading change
    assert change.abs().max() < 1e-3 * (off.reshape(3, 6, -1) @ J.T).abs().max()
    removed = (off - out).reshape(3, 6, -1)
    # what was removed lies in the row space of J: orthogonal to J's null space
    null = torch.linalg.svd(J, full_matrices=True).Vh[3:]               # [D-A, D]
    assert (removed @ null.T).abs().max() < 1e-4
    assert torch.equal(project_offsets(off, jac, strength=0.0), off)
    half = project_offsets(off, jac, strength=0.5, ridge=1e-9)
    assert torch.allclose(half, 0.5 * (off + out), atol=1e-5)


def test_projection_skips_rows_the_face_cannot_show_and_checks_arguments():
    render, reader, w, J = _linear_world()
    jac, _ = identity_jacobian(render, reader, w)
    off = torch.randn(3, 2, 4, 5, generator=torch.Generator().manual_seed(2))
    rows = torch.tensor([[True, False, True]] * 3)
    out = project_offsets(off, jac, rows=rows, ridge=1e-9)
    change = out.reshape(3, 2, -1) @ J.T
    assert change[..., [0, 2]].abs().max() < 1e-3 and change[..., 1].abs().max() > 1e-2  # reading 1 left free
    with pytest.raises(UserError, match="strength"):
        project_offsets(off, jac, strength=1.5)
    with pytest.raises(UserError, match="does not fit"):
        project_offsets(off[:2], jac)
