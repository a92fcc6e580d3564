"""The DDP animator benchmark behind bench/bench_ddp_animator.py (see its docstring for usage).

    cli.py          command line and the dispatch between the modes
    distributed.py  rank/world from torchrun, process group, device choice, deterministic mode
    model.py        the AnimatorModule with in-code frozen networks, the DDP wrapper
    batches.py      the global batch of a step and a rank's slice of it
    clock.py        CUDA-event / perf_counter intervals and the forward hooks that feed them
    measure.py      the measured loop: warm-up, timed steps with and without gradient sync, all-reduce
    report.py       environment/config/model records, phase summary, tables of one or several runs
    equivalence.py  --check-equivalence (N deterministic Adam steps -> safetensors) and --compare
"""
