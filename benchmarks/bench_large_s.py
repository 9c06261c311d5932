"""Large S on one machine: fit, scalar marglik tuning, GLM predictive, peak memory.

MLP 256-1024-780-10 (D = 1,070,478), N = 256 generated points (labels from a
random teacher, 200 full-batch Adam steps), classification, float32, random
subnetworks of S weights. One fresh process per (implementation, S); its peak
resident memory above the baseline (after model, data and warm-up) is read from
``VmHWM`` after ``clear_refs``, and reported in units of one S x S float32 matrix.

    python benchmarks/bench_large_s.py                      # S = 10k..50k, ours
    python benchmarks/bench_large_s.py --sizes 10000 --impls laplace
    python benchmarks/bench_large_s.py --plot-only          # redraw from the JSON

laplace 0.3 (``FullSubnetLaplace``, default backend) runs under the same RSS
watchdog (``--mem-gib``) and time cap (``--cap-s``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench_vs_laplace import rss_gib  # the same RSS reading as the other benchmarks

HERE = os.path.dirname(os.path.abspath(__file__))


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def mlp_problem(n: int):
    """The MLP 256-1024-780-10 trained for 200 full-batch Adam steps on n
    generated inputs (labels from a random linear teacher): model, X, y."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(256, 1024), nn.Tanh(), nn.Linear(1024, 780), nn.Tanh(),
        nn.Linear(780, 10),
    )  # fmt: skip
    X = torch.randn(n, 256)
    with torch.no_grad():
        teacher = nn.Linear(256, 10)
        y = teacher(X).argmax(-1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model, X, y


def child(impl: str, S: int, n: int) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    model, X, y = mlp_problem(n)
    D = sum(p.numel() for p in model.parameters())
    idx = torch.randperm(D, generator=torch.Generator().manual_seed(1))[:S].sort()[0]
    dl = DataLoader(TensorDataset(X, y), batch_size=32)
    if impl == "ours":
        import laplace_subnet_ext  # noqa: F401

    from laplace import Laplace

    torch.linalg.cholesky(torch.eye(64))  # load LAPACK before the baseline
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    out = {"impl": impl, "S": S, "D": D, "N": n}
    t0 = time.perf_counter()
    kw = {"curvature_dtype": torch.float32} if impl == "ours" else {}  # float32 rows
    la = Laplace(
        model, "classification", "subnetwork", "full", subnetwork_indices=idx, **kw
    )
    la.fit(dl)
    out["fit_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    la.optimize_prior_precision(method="marglik")
    out["marglik_s"] = time.perf_counter() - t
    out["prior_precision"] = float(la.prior_precision.mean())
    info = getattr(la, "marglik_tuning_info", None)
    if info:
        out["tuning"] = info
    t = time.perf_counter()
    with torch.no_grad():
        p = la(X, pred_type="glm", link_approx="probit")
    out["predict_s"] = time.perf_counter() - t
    out["total_s"] = time.perf_counter() - t0
    out["nll"] = float(nn.functional.nll_loss(p.clamp_min(1e-12).log(), y))
    peak = _status("VmHWM") - base
    out["peak_gb"] = peak / 1e9
    out["peak_SxS"] = peak / (S * S * 4)
    return out


def run(impl: str, S: int, n: int, cap_s: float, mem_gib: float) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(S), str(n)]
    # other work on the machine slows the run: record how busy it was at the start
    when = {"started": time.strftime("%Y-%m-%d %H:%M"), "load1": os.getloadavg()[0]}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, why = time.perf_counter() + cap_s, None
    while p.poll() is None:
        if rss_gib(p.pid) > mem_gib:
            why = f"out of memory: resident memory passed {mem_gib:.0f} GiB"
        elif time.perf_counter() > deadline:
            why = f"did not finish in {cap_s:.0f} s"
        if why:
            p.kill()
            break
        time.sleep(0.1)
    stdout, stderr = p.communicate()
    if why or p.returncode != 0:
        return {"impl": impl, "S": S, "N": n, "failed": why or stderr[-800:], **when}
    return {**json.loads(stdout.strip().splitlines()[-1]), **when}


def plot(rows: list[dict], prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for impl, mk in (("ours", "o-"), ("laplace", "s--")):
        rs = [r for r in rows if r["impl"] == impl and "failed" not in r]
        if not rs:
            continue
        S = [r["S"] for r in rs]
        for key in ("fit_s", "marglik_s", "predict_s", "total_s"):
            a.loglog(S, [r[key] for r in rs], mk, label=f"{impl} {key[:-2]}")
        b.loglog(S, [r["peak_gb"] for r in rs], mk, label=f"{impl} peak RSS")
    ours = [r for r in rows if r["impl"] == "ours" and "failed" not in r]
    if ours:
        S0, T0 = ours[-1]["S"], ours[-1]["total_s"]
        xs = [r["S"] for r in ours]
        a.loglog(xs, [T0 * (s / S0) ** 3 for s in xs], "k:", label="~ S^3")
        a.loglog(xs, [T0 * (s / S0) ** 2 for s in xs], "k-.", label="~ S^2")
        b.loglog(xs, [2 * s * s * 4 / 1e9 for s in xs], "k:", label="2 S x S (plan)")
        b.loglog(xs, [s * s * 4 / 1e9 for s in xs], "k-.", label="1 S x S")
    a.set(xlabel="S", ylabel="seconds", title="time (2 CPU cores, float32)")
    b.set(xlabel="S", ylabel="GB above baseline", title="peak resident memory")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[10000, 20000, 30000, 40000, 50000]
    )
    ap.add_argument("--impls", nargs="+", default=["ours"])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--cap-s", type=float, default=3600)
    ap.add_argument("--mem-gib", type=float, default=21)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "large_s"))
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        impl, S, n = a.child
        print(json.dumps(child(impl, int(S), int(n))), flush=True)
        return
    rows = []
    if os.path.exists(a.out + ".json"):
        with open(a.out + ".json") as fh:
            rows = json.load(fh)["rows"]
    if not a.plot_only:
        for impl in a.impls:
            for S in a.sizes:
                r = run(impl, S, a.n, a.cap_s, a.mem_gib)
                rows = [x for x in rows if (x["impl"], x["S"]) != (impl, S)] + [r]
                rows.sort(key=lambda x: (x["impl"], x["S"]))
                print(json.dumps(r), flush=True)
                os.makedirs(os.path.dirname(a.out), exist_ok=True)
                with open(a.out + ".json", "w") as fh:
                    json.dump({"rows": rows}, fh, indent=1)
    print(f"\n{'impl':<8} {'S':>6} {'fit s':>7} {'marglik s':>9} {'pred s':>7} "
          f"{'total s':>8} {'peak GB':>8} {'peak SxS':>8} {'lambda':>8}")  # fmt: skip
    for r in rows:
        if "failed" in r:
            print(f"{r['impl']:<8} {r['S']:>6}  failed: {r['failed'][:80]}")
            continue
        print(
            f"{r['impl']:<8} {r['S']:>6} {r['fit_s']:7.1f} {r['marglik_s']:9.1f} "
            f"{r['predict_s']:7.1f} {r['total_s']:8.1f} {r['peak_gb']:8.2f} "
            f"{r['peak_SxS']:8.2f} {r['prior_precision']:8.3g}"
        )
    plot(rows, a.out)


if __name__ == "__main__":
    main()
