"""ViT-B/16 (torchvision, random init, 86M weights): subnetwork Laplace over the MLP
blocks of all 12 layers (``--pool mlp``) or over all tensors (``--pool all``),
side by side with laplace-torch 0.3 (aleximmer/Laplace#232); or with the
defaults end to end (``--pool default``: ``n_params_subnet`` alone, so the
default selection picks S of all 86M weights inside ``fit``; its stages, where S
landed and the fit's time without the selection are recorded).

Each implementation runs in its own process, stopped (and recorded as out of
memory) when its resident memory passes ``--mem-gib``; partial results survive.
Records fit, scalar marglik tuning (100 steps) and GLM predictive on the N inputs,
peak RSS, (ours) which tensors took the fast path and the flop bound of the fit
(c backward passes + one GEMM) in the same process. Prints a table, writes JSON.

    python benchmarks/bench_vit.py --n 32 --n-subnet 10000 --mem-gib 19
    python benchmarks/bench_vit.py --impls ours --pool default --mem-gib 19 \
        --out benchmarks/results/vit_b_16_default   # the defaults end to end
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time

from bench_vs_laplace import _bound, watch


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _run(impl: str, n: int, n_subnet: int, batch: int, pool_kind: str, q) -> None:
    import torch
    from laplace import FullSubnetLaplace
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.models import vit_b_16

    from laplace_subnet_ext import DenseSubnetLaplace

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = vit_b_16(num_classes=10).eval()
    with torch.no_grad():  # the head is zero-initialised: give it weights
        model.heads.head.weight.normal_(0, 0.02)
    named = [(k, p) for k, p in model.named_parameters()]
    D = sum(p.numel() for _, p in named)
    # positions of the pool's tensors in the parameter vector
    pool, start = [], 0
    for k, p in named:
        if pool_kind == "all" or ".mlp." in k:
            pool.append(torch.arange(start, start + p.numel()))
        start += p.numel()
    pool = torch.cat(pool)
    idx = pool[torch.randperm(len(pool))[:n_subnet]].sort().values
    if pool_kind == "default":
        idx = None  # n_params_subnet alone: the default selection, inside fit
    X, y = torch.randn(n, 3, 224, 224), torch.randint(10, (n,))
    dl = DataLoader(TensorDataset(X, y), batch_size=batch)
    out = {
        "impl": impl,
        "D": D,
        "S": n_subnet,
        "N": n,
        "batch": batch,
        "pool": pool_kind,
        "pool_weights": len(pool),
        "baseline_rss_gb": _rss_gb(),
    }
    cls = FullSubnetLaplace if impl == "laplace" else DenseSubnetLaplace
    kw = {} if impl == "laplace" else {"curvature_dtype": torch.float32}  # as laplace
    if idx is None:  # the defaults, end to end
        la = DenseSubnetLaplace(model, "classification", n_params_subnet=n_subnet)
    else:
        la = cls(model, "classification", idx, **kw)
    out["stage"] = "fit"  # where a stopped run was
    q.put(dict(out))
    t = time.perf_counter()
    try:
        la.fit(dl)
    except (RuntimeError, MemoryError, NotImplementedError) as e:
        out["error"] = f"fit failed: {type(e).__name__}: {str(e)[:160]}"
        out["peak_rss_gb"] = _rss_gb()
        out["fit_failed_after_s"] = time.perf_counter() - t
        q.put(out)
        return
    out["fit_s"] = time.perf_counter() - t
    out["peak_rss_gb"] = _rss_gb()
    if la.selection is not None:  # the default selection ran inside fit
        mask = la.selection
        out["select_s"] = la.selection_seconds
        out["fit_s"] -= la.selection_seconds
        out["selection"] = {
            "stage_seconds": mask.stage_seconds,
            "chosen_by": mask.chosen_by,
            "objective": mask.objective,
            "eval_used": mask.eval_used,
            "greedy_skipped": mask.greedy_skipped,
            "pool": mask.pool_size,
            "block": mask.block_used,
            "n_zero_curvature": mask.n_zero_curvature,
        }
        counts, start, chosen = {}, 0, la.subnetwork_indices
        for k, p in named:
            hit = int(((chosen >= start) & (chosen < start + p.numel())).sum())
            if hit:
                counts[k] = hit
            start += p.numel()
        out["where"] = counts
        out["curvature_dtype"] = str(la.H.dtype)
    if impl == "ours":
        out["generic_reasons"] = la.generic_reasons
        fast, slow = la.jacobians.split()
        out["fast_tensors"] = len(fast)
        out["generic_tensors"] = len(slow)
        out["H_gb"] = la.H.numel() * la.H.element_size() / 1e9
    q.put(dict(out))
    for name, step in (
        ("marglik_s", lambda: la.optimize_prior_precision(method="marglik")),
        ("predict_s", lambda: la(X, pred_type="glm")),
    ):
        out["stage"] = name[:-2]
        q.put(dict(out))
        t = time.perf_counter()
        step()
        out[name] = time.perf_counter() - t
        out["peak_rss_gb"] = _rss_gb()
        q.put(dict(out))
    out["prior_precision"] = float(la.prior_precision.reshape(-1)[0])
    if impl == "ours":
        del la
        out["flop_bound_s"] = _bound(model, dl, 10, n_subnet)
    out["done"] = True
    q.put(dict(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--n-subnet", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mem-gib", type=float, default=20.0)
    ap.add_argument("--cap", type=float, default=1800.0)
    ap.add_argument("--impls", nargs="+", default=["laplace", "ours"])
    ap.add_argument(
        "--pool",
        choices=["mlp", "all", "default"],
        default="mlp",
        help="S drawn at random from the MLP blocks or all tensors, or chosen by "
        "the default selection (n_params_subnet alone, inside fit)",
    )
    ap.add_argument("--out", default="benchmarks/results/vit_b_16")
    a = ap.parse_args()
    rows = []
    ctx = mp.get_context("spawn")
    for impl in a.impls:
        q = ctx.Queue()
        args = (impl, a.n, a.n_subnet, a.batch, a.pool, q)
        p = ctx.Process(target=_run, args=args)
        t0 = time.perf_counter()
        p.start()
        res = {"impl": impl}

        def drain(q=q):
            nonlocal res
            while not q.empty():
                res = q.get()

        stopped = watch(p, a.cap, a.mem_gib, drain)
        res["wall_s"] = time.perf_counter() - t0
        time.sleep(0.2)
        drain()
        res["wall_s"] = time.perf_counter() - t0
        if stopped:
            res["status"] = stopped
        else:
            res["status"] = (
                "ok"
                if res.get("done")
                else res.get("error", f"failed (exit {p.exitcode})")
            )
        rows.append(res)
        print(json.dumps(res), flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"args": vars(a), "cpu_threads": 2, "rows": rows}, fh, indent=1)
    keys = (
        "select_s",
        "fit_s",
        "marglik_s",
        "predict_s",
        "peak_rss_gb",
        "flop_bound_s",
    )
    print(f"\n{'impl':<8} {'D':>10} {'S':>6} " + " ".join(f"{k:>12}" for k in keys))
    for r in rows:
        vals = [f"{r[k]:.2f}" if k in r else "-" for k in keys]
        print(
            f"{r['impl']:<8} {r.get('D', '-'):>10} {r.get('S', '-'):>6} "
            + " ".join(f"{v:>12}" for v in vals)
            + f"  {r['status']}"
        )


if __name__ == "__main__":
    main()
