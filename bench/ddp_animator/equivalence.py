"""The equivalence check: K ranks x batch B against 1 rank x batch K*B (weights after N Adam steps).

Equivalence (--check-equivalence N): deterministic algorithms (warn_only), cuDNN deterministic,
TF32 off, CUBLAS_WORKSPACE_CONFIG=:4096:8, the same model seed on every rank; runs N Adam steps
and writes (rank 0) the trainable weights before and after and the step-1 gradient (after the DDP
average) to --save-weights (safetensors). --compare A B prints their differences (init, step-1
gradient, final weights, losses) and says EQUIVALENT when the inits are identical and the step-1
gradient and the loss curve agree within --grad-tol / --loss-tol (exit code 1 otherwise). The
final weights are reported but not judged: Adam with betas (0, 0.999) normalises every gradient
element by its own RMS, so rounding noise on elements whose gradient is ~0 becomes steps of about
+-lr there (seen on CPU: a 5e-10 gradient element ending 5.7e-3 apart after 3 steps).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from bench.ddp_animator.batches import global_batch, local_batch
from bench.ddp_animator.distributed import Dist, set_deterministic
from bench.ddp_animator.model import StepModule, build_module, wrap
from bench.ddp_animator.report import config_info, device_name, env_info
from src.utils.errors import UserError

WEIGHTS_FORMAT = "lgfa-ddp-equivalence-1"


def check_equivalence(args: argparse.Namespace, d: Dist) -> dict:
    set_deterministic()
    module = build_module(args).to(d.device)
    module.train()
    model, is_ddp = wrap(StepModule(module), d, args)
    opt = module.configure_optimizers()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = dict(module.named_parameters())
    init = {k: v.detach().cpu().clone() for k, v in module.trainable_state_dict().items()}
    size = args.batch * d.world
    grad1, losses = {}, []
    for s in range(args.check_equivalence):
        batch = local_batch(global_batch(s, module.prompt_list, size, args.data_seed), d.rank, args.batch, d.device,
                            not args.no_candidates)
        opt.zero_grad(set_to_none=True)
        loss = model(batch)
        loss.backward()
        if s == 0:  # the gradient that Adam sees (after DDP's average over ranks)
            grad1 = {n: params[n].grad.detach().cpu().clone() for n in names}
        opt.step()
        mean = loss.detach().clone()
        if d.initialised:
            dist.all_reduce(mean)
            mean /= d.world
        losses.append(float(mean))
    final = {k: v.detach().cpu().clone() for k, v in module.trainable_state_dict().items()}
    # the DDP replicas must agree with each other (they start equal and apply equal updates)
    flat = torch.cat([v.reshape(-1).float() for v in final.values()]).to(d.device)
    spread = 0.0
    if d.initialised:
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = (flat - ref).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        spread = float(diff)
    meta = {"format": WEIGHTS_FORMAT, "world_size": d.world, "batch_per_rank": args.batch, "global_batch": size,
            "steps": args.check_equivalence, "losses": losses, "rank_spread_max_abs": spread,
            "env": env_info(d), "config": config_info(args, d, is_ddp)}
    if d.rank == 0:
        from safetensors.torch import save_file

        tensors = {}
        for prefix, group in (("init", init), ("final", final), ("grad1", grad1)):
            for k, v in group.items():
                tensors[f"{prefix}/{k}"] = v.contiguous()
        Path(args.save_weights).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, args.save_weights, metadata={"meta": json.dumps(meta)})
        print(f"K={d.world} x batch {args.batch} on {device_name(meta['env'])}: {args.check_equivalence} Adam steps, "
              f"losses {', '.join(f'{x:.5f}' for x in losses)}; replicas differ by {spread:.3g}; "
              f"wrote {args.save_weights}")
    return meta


def read_weights(path: str) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            groups: dict[str, dict[str, torch.Tensor]] = {"init": {}, "final": {}, "grad1": {}}
            for key in f.keys():
                prefix, name = key.split("/", 1)
                groups.setdefault(prefix, {})[name] = f.get_tensor(key).double()
    except Exception as e:  # noqa: BLE001 - missing / not safetensors: one line
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path}: not a --save-weights file of this script")
    return meta, groups


def _diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """max |a-b|, per-tensor relative max (max|a-b| / max|a|, worst tensor) and the global norms."""
    max_abs, max_rel, d2, a2 = 0.0, 0.0, 0.0, 0.0
    for k in a:
        da = (a[k] - b[k]).abs()
        scale = float(a[k].abs().max()) if a[k].numel() else 0.0
        m = float(da.max()) if da.numel() else 0.0
        max_abs = max(max_abs, m)
        if scale > 0:
            max_rel = max(max_rel, m / scale)
        d2 += float((da ** 2).sum())
        a2 += float((a[k] ** 2).sum())
    return {"max_abs": max_abs, "max_rel": max_rel, "norm_diff": math.sqrt(d2), "norm_a": math.sqrt(a2)}


def compare(path_a: str, path_b: str, args: argparse.Namespace) -> int:
    meta_a, a = read_weights(path_a)
    meta_b, b = read_weights(path_b)
    if set(a["final"]) != set(b["final"]) or any(a["final"][k].shape != b["final"][k].shape for k in a["final"]):
        raise UserError("the two files hold different trainable tensors (different configs?)")
    if meta_a.get("global_batch") != meta_b.get("global_batch") or meta_a.get("steps") != meta_b.get("steps"):
        print(f"warning: global batch {meta_a.get('global_batch')} vs {meta_b.get('global_batch')}, steps "
              f"{meta_a.get('steps')} vs {meta_b.get('steps')}: not the same training", file=sys.stderr)
    init = _diff(a["init"], b["init"])
    grad = _diff(a["grad1"], b["grad1"])
    dot = sum(float((a["grad1"][k] * b["grad1"][k]).sum()) for k in a["grad1"])
    nb = math.sqrt(sum(float((v ** 2).sum()) for v in b["grad1"].values()))
    grad["cosine"] = dot / (grad["norm_a"] * nb) if grad["norm_a"] > 0 and nb > 0 else float("nan")
    grad["rel_norm"] = grad["norm_diff"] / grad["norm_a"] if grad["norm_a"] > 0 else float("nan")
    fin = _diff(a["final"], b["final"])
    moved = _diff(a["final"], a["init"])["norm_diff"]
    fin["rel_to_update"] = fin["norm_diff"] / moved if moved > 0 else float("nan")
    worst = []
    for k in a["final"]:
        dk = float((a["final"][k] - b["final"][k]).norm())
        mk = float((a["final"][k] - a["init"][k]).norm())
        worst.append((dk / mk if mk > 0 else float("inf") if dk > 0 else 0.0, k, dk))
    worst.sort(reverse=True)
    desc = lambda m: (f"K={m.get('world_size')} x batch {m.get('batch_per_rank')} "  # noqa: E731
                      f"on {device_name(m.get('env') or {})}")
    print(f"A: {path_a} ({desc(meta_a)}), B: {path_b} ({desc(meta_b)}); {meta_a.get('steps')} Adam steps, "
          f"global batch {meta_a.get('global_batch')}")
    print(f"losses A: {', '.join(f'{x:.5f}' for x in meta_a.get('losses', []))}")
    print(f"losses B: {', '.join(f'{x:.5f}' for x in meta_b.get('losses', []))}")
    print(f"replica spread inside A / B (max |rank r - rank 0|): {meta_a.get('rank_spread_max_abs')} / "
          f"{meta_b.get('rank_spread_max_abs')}")
    print("| quantity | max abs diff | max rel diff (per tensor, max|A-B|/max|A|) | ||A-B|| / reference |")
    print("|---|---|---|---|")
    print(f"| init weights | {init['max_abs']:.3e} | {init['max_rel']:.3e} | - |")
    print(f"| step-1 gradient | {grad['max_abs']:.3e} | {grad['max_rel']:.3e} | {grad['rel_norm']:.3e} "
          f"(ref ||gA||; cosine {grad['cosine']:.6f}) |")
    print(f"| final weights | {fin['max_abs']:.3e} | {fin['max_rel']:.3e} | {fin['rel_to_update']:.3e} "
          f"(ref ||A - init||) |")
    print("worst tensors by ||A-B|| / ||A-init||: " + "; ".join(f"{k} {r:.3e}" for r, k, _ in worst[:5]))
    la, lb = meta_a.get("losses", []), meta_b.get("losses", [])
    loss_rel = max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(la, lb)), default=float("nan"))
    if len(la) != len(lb) or not la:
        loss_rel = float("inf")
    print(f"max relative loss difference over the steps: {loss_rel:.3e}")
    # The verdict rests on the step-1 gradient (same weights, same data: it must agree up to float
    # rounding) and on the loss curve. The final weights are a diagnostic only: Adam (betas 0, 0.999)
    # divides every gradient element by its own RMS, so rounding noise on an element whose gradient is
    # ~0 becomes a step of about +-lr there, and such flips accumulate over the steps.
    ok = init["max_abs"] == 0 and grad["rel_norm"] <= args.grad_tol and loss_rel <= args.loss_tol
    verdict = "EQUIVALENT" if ok else "NOT EQUIVALENT"
    print(f"{verdict} (init identical: {init['max_abs'] == 0}; step-1 gradient {grad['rel_norm']:.2e} <= "
          f"{args.grad_tol:g}: {grad['rel_norm'] <= args.grad_tol}; losses {loss_rel:.2e} <= {args.loss_tol:g}: "
          f"{loss_rel <= args.loss_tol})")
    if ok and fin["rel_to_update"] > args.weight_tol:
        print(f"note: the final weights differ by {fin['rel_to_update']:.2e} of the update (> {args.weight_tol:g}); "
              "Adam turns rounding noise on near-zero gradient elements into +-lr steps, so this alone does not "
              "mean the gradients differ (see the step-1 gradient row)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": path_a, "b": path_b, "meta_a": {k: v for k, v in meta_a.items() if k != "env"},
                       "meta_b": {k: v for k, v in meta_b.items() if k != "env"}, "init": init, "grad1": grad,
                       "final": fin, "loss_max_rel_diff": loss_rel, "worst": [(k, r) for r, k, _ in worst[:10]],
                       "equivalent": ok, "tolerances": {"grad": args.grad_tol, "loss": args.loss_tol,
                                                        "weights_note": args.weight_tol}}, f, indent=2)
    return 0 if ok else 1
