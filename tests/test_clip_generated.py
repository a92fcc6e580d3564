"""Generator faces in the small CLIP's batches (src/embedded/training/clip_generated.py), on CPU with a
tiny random generator and oracle: off by default (the batches of renders only, bit for bit), the share
of generated faces and their captions, captions read from the oracle, nothing of either network in the
CLIP's state_dict or exported file."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.data.text_cache import save_text_cache
from src.embedded import PARAM_SPACE, sample_params, vocabulary
from src.embedded.oracle import AttributeOracle, save_oracle
from src.embedded.params import neutral_params
from src.embedded.training.clip import ClipModule
from src.embedded.training.clip_generated import GeneratedFaces, reading_concepts
from src.embedded.training.clip_pairs import build_caption_list, make_pairs, neutral_captions
from src.stylegan import save_generator
from src.utils.errors import UserError
from tests.fixtures_stylegan import tiny_generator

ARCH = dict(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_generator_and_oracle(root) -> tuple[str, str]:
    """Files of a 16 px generator and a 16 px oracle with random weights, written under ``root``."""
    G = save_generator(tiny_generator(res=16, w_dim=16, channel_base=256, channel_max=16), root / "g.safetensors")
    torch.manual_seed(0)
    oracle = save_oracle(AttributeOracle(resolution=16, width=4, hidden=8).eval(), root / "oracle.safetensors")
    return str(G), str(oracle)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(text cache, tiny generator, tiny oracle): random "MiniLM" features of the real caption list."""
    root = tmp_path_factory.mktemp("generated")
    captions = build_caption_list()
    emb = F.normalize(torch.randn(len(captions), 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    cache = save_text_cache(root / "cache.safetensors", captions, emb)
    return (str(cache), *tiny_generator_and_oracle(root))


def _module(files, **kw) -> ClipModule:
    cache, G, oracle = files
    torch.manual_seed(0)
    return ClipModule(arch=ARCH, text_cache_path=cache, resolution=32, batch_size=8,
                      **{"generator_path": G, "oracle_path": oracle, **kw})


def _unit_of(concept, strength: float = 1.0) -> torch.Tensor:
    """[1, P] the oracle's output for a face at rest moved to ``concept``'s preset (None: at rest)."""
    rest = neutral_params(sample_params(1, torch.Generator().manual_seed(7)))
    return PARAM_SPACE.normalize(rest if concept is None else vocabulary.apply_preset(rest, concept, strength))


class _Reads(torch.nn.Module):
    """An oracle that reads ``unit`` [1, P] on every face."""

    def __init__(self, unit: torch.Tensor):
        super().__init__()
        self.unit = unit

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.unit.expand(img.shape[0], -1)


def test_off_by_default_the_batches_are_the_renders_of_before(files):
    m = _module(files)
    assert m._generated is None
    img, captions = m.training_pairs()
    g = torch.Generator().manual_seed(0 * 1000003)  # seed 0, rank 0: the module's pair generator
    before = make_pairs(8, g, 32, "cpu", 0.3, 0.1, allowed=m._allowed)
    assert torch.equal(img, before[0]) and captions == before[1]
    assert torch.equal(m._gen.get_state(), g.get_state())  # the next steps draw the same too


def test_a_share_of_the_batch_is_generated_and_captioned(files, tmp_path):
    m = _module(files, generator_fraction=0.5)
    off = _module(files)
    m.log = lambda *a, **kw: None  # no trainer
    img, captions = m.training_pairs()
    g = torch.Generator().manual_seed(0)
    renders = make_pairs(4, g, 32, "cpu", 0.3, 0.1, allowed=m._allowed)
    generated = m._generated.sample(4, g, 32, "cpu", 0.3, m._allowed)
    assert img.shape == (8, 3, 32, 32) and float(img.abs().max()) <= 1.0
    assert torch.equal(img[:4], renders[0]) and torch.equal(img[4:], generated[0])
    assert captions == renders[1] + generated[1]
    heldout = set(vocabulary.all_heldout_phrasings())
    assert all(c in m._allowed and c not in heldout for c in captions)
    # neither network is in the module's tree, its checkpoint or its exported file
    assert m.state_dict().keys() == off.state_dict().keys()
    assert all(k.startswith("clip.") for k in m.state_dict())
    from safetensors import safe_open

    with safe_open(str(m.export(tmp_path / "clip.safetensors")), "pt") as f:
        assert set(f.keys()) == set(m.clip.state_dict().keys())
    assert GeneratedFaces.count(0.5, 8) == 4 and GeneratedFaces.count(0.01, 8) == 1 and GeneratedFaces.count(1.0, 8) == 8


def test_all_generated_and_the_evaluation_reports_the_generated_faces(files):
    m = _module(files, generator_fraction=1.0)
    logged = {}
    m.log = lambda k, v, **kw: logged.__setitem__(k, float(torch.as_tensor(v)))
    img, captions = m.training_pairs()
    assert img.shape == (8, 3, 32, 32) and len(captions) == 8 and 0.0 <= logged["train/generated_concept_share"] <= 1.0
    m._generated._nets = (m._generated._nets[0], _Reads(_unit_of("winking")))
    m._eval_start()
    m._eval_step(0)
    m._eval_end("val")
    assert logged["val/generated_concept_share"] == 1.0 and 0.0 <= logged["val/zs_acc_generated"] <= 1.0


def test_captions_come_from_the_oracles_reading(files):
    m = _module(files, generator_fraction=0.5)
    gen = m._generated
    winking = set(vocabulary.get("winking").phrasings)
    identity = set(build_caption_list()) - set(vocabulary.all_training_phrasings()) - set(vocabulary.all_heldout_phrasings())
    gen._nets = (gen._nets[0], _Reads(_unit_of("winking")))
    _, captions, concepts = gen.sample(16, torch.Generator().manual_seed(1), 32, "cpu", identity_prob=0.0)
    assert concepts.tolist() == [vocabulary.index("winking")] * 16 and set(captions) <= winking
    assert len(set(captions)) > 1  # random training phrasings, as for renders
    _, captions, _ = gen.sample(16, torch.Generator().manual_seed(1), 32, "cpu", identity_prob=0.5)
    assert set(captions) <= winking | identity and set(captions) & winking
    gen._nets = (gen._nets[0], _Reads(_unit_of(None)))
    _, captions, concepts = gen.sample(16, torch.Generator().manual_seed(1), 32, "cpu", identity_prob=0.0)
    assert concepts.tolist() == [-1] * 16 and set(captions) <= identity | set(neutral_captions())


@pytest.mark.parametrize("concept", ["smiling", "closing eyes", "winking", "opening mouth", "crying",
                                     "turning head left", "looking right", "blushing"])
def test_a_clear_reading_is_its_concept(concept):
    assert reading_concepts(_unit_of(concept)).item() == vocabulary.index(concept)
    assert reading_concepts(_unit_of(concept, 0.6)).item() == vocabulary.index(concept)
    assert reading_concepts(_unit_of(concept, 0.3)).item() == -1  # too little of it


def test_no_concept_at_rest_or_in_a_mixture():
    assert reading_concepts(_unit_of(None)).item() == -1
    both = vocabulary.apply_preset(PARAM_SPACE.denormalize(_unit_of("closing eyes")), "opening mouth", 1.0)
    assert reading_concepts(PARAM_SPACE.normalize(both)).item() == -1  # two concepts at once: neither clearly
    assert reading_concepts(_unit_of("angry")).item() == -1  # angry and hatred nearly coincide


@pytest.mark.parametrize("bad", [dict(generator_fraction=1.5), dict(generator_fraction=-0.1),
                                 dict(generator_psi=0.0), dict(caption_min_reach=0.0),
                                 dict(caption_min_alignment=1.5), dict(caption_margin=-0.1),
                                 dict(generator_fraction=0.5, generator_path=None),
                                 dict(generator_fraction=0.5, oracle_path="missing/oracle.safetensors")])
def test_bad_options_are_one_line_errors(files, bad):
    with pytest.raises(UserError) as e:
        _module(files, **bad)
    assert "\n" not in str(e.value)
