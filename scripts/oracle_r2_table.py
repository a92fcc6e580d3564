"""R² table of the shipped attribute oracle on 2,048 held-out renders (CPU): python scripts/oracle_r2_table.py"""
import sys; from pathlib import Path; sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
torch.set_num_threads(2)
from src.embedded.params import PARAM_SPACE, sample_params
from src.embedded.render import render
from src.embedded.oracle import load_oracle
from src.embedded.training.oracle import r2_per_param, r2_observable
oracle = load_oracle(str(Path(__file__).resolve().parents[1] / 'assets' / 'oracle_synthetic.safetensors')).eval()
g = torch.Generator().manual_seed(987654)
preds, targets = [], []
with torch.no_grad():
    for _ in range(8):
        p = sample_params(256, g)
        preds.append(oracle(render(p, 128)).float()); targets.append(PARAM_SPACE.normalize(p))
pred, target = torch.cat(preds), torch.cat(targets)
r2, r2o = r2_per_param(pred, target), r2_observable(pred, target)
ex = PARAM_SPACE.mask("expression")
print("n =", len(target))
print("| attribute | kind | R² (all faces) | R² (where observable) |\n|---|---|---|---|")
for i, n in enumerate(PARAM_SPACE.names):
    print(f"| {n} | {'expression' if ex[i] else 'identity'} | {r2[i]:.3f} | {r2o[i]:.3f} |")
print(f"expression min: all {r2[ex].min():.3f}, observable {r2o[ex].min():.3f}; identity min: all {r2[~ex].min():.3f}, observable {r2o[~ex].min():.3f}")
