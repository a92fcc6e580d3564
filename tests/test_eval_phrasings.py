"""evaluate.py phrasings=: which sentences animate each concept, and the per-sentence figures."""
from __future__ import annotations

import json
import os

import pytest

import evaluate
from src.eval.phrasings import resolve_phrasings
from src.utils.errors import UserError
from tests.test_animate_cli import exported  # noqa: F401  (the tiny exported animator)

SYNTHETIC = {"name": "synthetic", "prompts": {"template": "The person is {}.", "concepts": ["smiling", "winking"]}}


def test_the_template_set_is_the_domain_prompt():
    assert resolve_phrasings("template", SYNTHETIC, ["smiling"]) == {"smiling": ["The person is smiling."]}
    assert resolve_phrasings(None, SYNTHETIC, ["winking"]) == {"winking": ["The person is winking."]}


def test_heldout_phrasings_are_the_vocabularys_and_never_training_ones():
    from src.embedded import vocabulary

    held = resolve_phrasings("heldout", SYNTHETIC, ["smiling", "winking"])
    trained = set(vocabulary.all_training_phrasings())
    assert held["smiling"] == vocabulary.get("smiling").heldout and len(held["winking"]) >= 2
    assert not trained & {s for v in held.values() for s in v}
    assert resolve_phrasings("training", SYNTHETIC, ["smiling"])["smiling"][0] == "The person is smiling."


def test_a_phrasings_file_and_its_errors(tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"smiling": ["beaming with joy ", "a big grin"], "winking": "one eye shut"}))
    assert resolve_phrasings(str(good), SYNTHETIC, ["smiling", "winking"]) == {
        "smiling": ["beaming with joy", "a big grin"], "winking": ["one eye shut"]}
    cases = {"missing.json": None, "list.json": "[1, 2]", "broken.json": "{nope", "empty.json": '{"smiling": []}',
             "other.json": '{"angry": ["mad"]}', "p.txt": "smiling"}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as e:
            resolve_phrasings(str(tmp_path / name), SYNTHETIC, ["smiling"])
        assert "\n" not in str(e.value), name
    (tmp_path / "dir.json").mkdir()
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path in (tmp_path / "dir.json", fifo):  # refused before opening: a FIFO would hang
        with pytest.raises(UserError, match="not a regular file"):
            resolve_phrasings(str(path), SYNTHETIC, ["smiling"])
    with pytest.raises(UserError, match="embedded vocabulary"):
        resolve_phrasings("heldout", {**SYNTHETIC, "name": "ffhq"}, ["smiling"])


def test_evaluate_reports_each_phrasing(exported, tmp_path, capsys):  # noqa: F811
    from src.embedded.oracle import AttributeOracle, save_oracle

    oracle = save_oracle(AttributeOracle(resolution=16, width=4, hidden=8), tmp_path / "oracle")
    phrasings = tmp_path / "p.json"
    phrasings.write_text(json.dumps({"smiling": ["beaming with joy", "a big grin", "all smiles"]}))
    out = tmp_path / "r.json"
    rc = evaluate.main([f"checkpoint={exported['path']}", "faces=4", "frames=3", "batch=2", f"oracle={oracle}",
                        "concepts=[smiling]", f"phrasings={phrasings}", "paper_metrics=false", f"output={out}"])
    printed = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out.read_text())
    rows = result["per_concept"]["smiling"]["oracle_by_phrasing"]
    assert list(rows) == ["beaming with joy", "a big grin", "all smiles"]
    assert [r["videos"] for r in rows.values()] == [2, 1, 1]  # faces take the sentences in turn
    assert result["settings"]["phrasings"] == {"smiling": ["beaming with joy", "a big grin", "all smiles"]}
    assert "phrasings" not in result["summary"]
    assert "beaming with joy" in printed and "right way" in printed
    assert evaluate.main([f"checkpoint={exported['path']}", f"phrasings={tmp_path / 'none.json'}"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
