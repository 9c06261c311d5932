"""Side-by-side: laplace-torch's FullSubnetLaplace vs our DenseSubnetLaplace.

Each (implementation, problem) runs in its own subprocess with a wall-time cap;
wall time of select/fit/marglik/predict and the peak resident memory of the
process are recorded; a run over its cap is recorded as "did not finish".
Prints a table, writes JSON and a PNG.

    python benchmarks/bench_vs_laplace.py --widths 100 1000 --n-subnet 1000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time

PROBLEMS_HELP = "MLP 100 -> width -> width -> 10 inputs/outputs; D grows with width^2"


def _build(kind: str, width: int):
    from torch import nn

    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(100, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        ), (100,)
    if kind == "transformer":  # width = d_model; 6 layers, 4 heads, 32 tokens
        return TokenTransformer(width), (32,)
    # CNN on 32x32x3 inputs; width = channels of the first block
    c = width
    layers, ch = [], 3
    for out in (c, 2 * c, 4 * c, 8 * c):
        layers += [
            nn.Conv2d(ch, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.Conv2d(out, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        ch = out
    layers += [nn.Flatten(), nn.Linear(ch * 2 * 2, 10)]
    return nn.Sequential(*layers).eval(), (3, 32, 32)


def TokenTransformer(
    d: int, vocab: int = 1000, seq: int = 32, layers: int = 6, batch_first=True
):
    """Token classifier: Embedding + sinusoidal positions, ``nn.TransformerEncoder``
    (pre-norm off, no dropout; ``batch_first=False`` feeds it ``(t, b, d)``), mean
    pool, Linear head (10 classes). Both layouts hold the same parameters."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            pos = torch.arange(seq)[:, None] / 10000 ** (torch.arange(0, d, 2) / d)
            self.register_buffer(
                "pos", torch.stack([pos.sin(), pos.cos()], -1).flatten(1)
            )
            layer = nn.TransformerEncoderLayer(
                d, 4, 4 * d, dropout=0.0, batch_first=batch_first
            )
            self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(d, 10)

        def forward(self, tokens):
            x = self.emb(tokens) + self.pos
            if batch_first:
                return self.head(self.enc(x).mean(1))
            return self.head(self.enc(x.transpose(0, 1)).mean(0))

    return Net().eval()


def _inputs(kind: str, n: int, in_shape: tuple):
    import torch

    if kind == "transformer":
        return torch.randint(1000, (n, *in_shape))
    return torch.randn(n, *in_shape)


def rss_gib(pid: int) -> float:
    """Resident memory of a process (GiB), from /proc; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def watch(p, cap_s: float, mem_gib: float | None, poll=None) -> str | None:
    """Wait for process ``p`` up to ``cap_s`` seconds, killing it if its resident
    memory passes ``mem_gib`` (polled every 0.1 s, so the kernel's OOM killer never
    has to pick a process). Returns why it was stopped, or None."""
    deadline = time.perf_counter() + cap_s
    while p.is_alive():
        if poll is not None:
            poll()
        if mem_gib and rss_gib(p.pid) > mem_gib:
            p.kill()
            p.join()
            return f"out of memory: resident memory passed {mem_gib:.0f} GiB"
        if time.perf_counter() > deadline:
            p.kill()
            p.join()
            return f"did not finish in {cap_s:.0f} s"
        p.join(0.1)
    return None


def _bound(model, dl, n_out: int, n_subnet: int) -> float:
    """Seconds for the necessary work: c backward passes over the data and the
    (N c x S)^T (N c x S) product of J^T Lambda J (one GEMM)."""
    import torch

    t = time.perf_counter()
    for X, _ in dl:
        f = model(X)
        for k in range(n_out):
            torch.autograd.grad(
                f[:, k].sum(), list(model.parameters()), retain_graph=True
            )
    A = torch.randn(len(dl.dataset) * n_out, n_subnet)
    A.T @ A
    return time.perf_counter() - t


def _run(
    impl,
    kind,
    width,
    n_subnet,
    n_train,
    n_test,
    lik,
    q,
    backend_name="default",
):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(2)
    torch.manual_seed(0)
    from laplace import FullSubnetLaplace

    from laplace_subnet_ext import DenseSubnetLaplace

    model, in_shape = _build(kind, width)
    D = sum(p.numel() for p in model.parameters())
    X = _inputs(kind, n_train, in_shape)
    y = (
        torch.randint(10, (n_train,))
        if lik == "classification"
        else torch.randn(n_train, 10)
    )
    dl = DataLoader(TensorDataset(X, y), batch_size=100)
    out = {
        "impl": impl,
        "model": kind,
        "width": width,
        "D": D,
        "S": n_subnet,
        "lik": lik,
        # resident memory after imports, model and data; peaks are read against it
        "baseline_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }

    def step(name, fn):
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # recorded: a failing backend is a result here
            out["error"] = f"{name[:-2]} failed: {type(e).__name__}: {str(e)[:150]}"
            q.put(dict(out))
            raise SystemExit(1) from e
        out[name] = time.perf_counter() - t
        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        q.put(dict(out))  # partial results survive a later out-of-memory kill

    holder = {}
    step("select_s", lambda: holder.update(idx=torch.randperm(D)[:n_subnet]))
    cls = FullSubnetLaplace if impl == "laplace" else DenseSubnetLaplace
    # ours in float32 like laplace (the default would be float64 up to S = 10,000)
    kw = {} if impl == "laplace" else {"curvature_dtype": torch.float32}
    if impl == "laplace" and backend_name != "default":
        import laplace.curvature as curv

        kw["backend"] = getattr(curv, backend_name)
    la = cls(model, lik, holder["idx"], prior_precision=1.0, **kw)
    step("fit_s", lambda: la.fit(dl))
    step(
        "marglik_s", lambda: la.optimize_prior_precision(method="marglik", n_steps=100)
    )
    Xte = _inputs(kind, n_test, in_shape)
    step("predict_s", lambda: la(Xte, pred_type="glm"))
    if impl == "ours":
        out["flop_bound_s"] = _bound(model, dl, 10, n_subnet)
    out["done"] = True
    q.put(dict(out))


def run_capped(
    impl,
    kind,
    width,
    n_subnet,
    n_train,
    n_test,
    lik,
    cap_s,
    backend="default",
    mem_gib=None,
):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    args = (impl, kind, width, n_subnet, n_train, n_test, lik, q, backend)
    p = ctx.Process(target=_run, args=args)
    p.start()
    res = {"impl": impl, "model": kind, "width": width, "S": n_subnet, "lik": lik}

    def drain():
        nonlocal res
        while not q.empty():
            res = q.get()

    stopped = watch(p, cap_s, mem_gib, drain)
    time.sleep(0.2)
    drain()
    if stopped:
        res["status"] = stopped
    elif not res.get("done"):
        res["status"] = res.get("error") or f"failed (exit {p.exitcode})"
    else:
        res["status"] = "ok"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mlp", "cnn", "transformer"], default="mlp")
    ap.add_argument(
        "--mem-gib",
        type=float,
        default=None,
        help="resident-memory limit per run (GiB): a run above it is stopped and "
        "recorded as out of memory",
    )
    ap.add_argument("--widths", type=int, nargs="+", default=[300, 980])
    ap.add_argument("--n-subnet", type=int, nargs="+", default=[1000])
    ap.add_argument("--likelihoods", nargs="+", default=["classification"])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--impls", nargs="+", default=["laplace", "ours"])
    ap.add_argument("--cap", type=float, default=180.0)
    ap.add_argument(
        "--laplace-backend",
        default="BackPackGGN",
        help="laplace backend class name for the laplace runs (default: BackPackGGN, "
        "laplace's fastest for MLPs/sequential CNNs; 'default' = CurvlinopsGGN)",
    )
    ap.add_argument("--out", default="benchmarks/results/vs_laplace")
    a = ap.parse_args()
    rows = []
    for lik in a.likelihoods:
        for width in a.widths:
            for s in a.n_subnet:
                for impl in a.impls:
                    r = run_capped(
                        impl,
                        a.model,
                        width,
                        s,
                        a.n_train,
                        a.n_test,
                        lik,
                        a.cap,
                        a.laplace_backend,
                        a.mem_gib,
                    )
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"args": vars(a), "cpu_threads": 2, "rows": rows}, fh, indent=1)
    print(
        f"\n{'impl':<8} {'lik':<15} {'D':>9} {'S':>6} {'fit s':>8} {'marglik s':>9} "
        f"{'predict s':>9} {'peak GB':>8} {'bound s':>8}  status"
    )
    for r in rows:

        def f(k, r=r):
            return f"{r[k]:.2f}" if k in r else "-"

        print(
            f"{r['impl']:<8} {r.get('model', 'mlp')}/{r['lik']:<11} {r.get('D', '-'):>9} {r['S']:>6} "
            f"{f('fit_s'):>8} {f('marglik_s'):>9} {f('predict_s'):>9} "
            f"{f('peak_rss_gb'):>8} {f('flop_bound_s'):>8}  {r['status']}"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for impl in a.impls:
            ok = [r for r in rows if r["impl"] == impl and "fit_s" in r]
            axes[0].plot(
                [r["D"] for r in ok], [r["fit_s"] for r in ok], "o-", label=impl
            )
            axes[1].plot(
                [r["D"] for r in ok], [r["peak_rss_gb"] for r in ok], "o-", label=impl
            )
        for ax, lab in zip(axes, ["fit wall time [s]", "peak RSS [GB]"]):
            ax.set_xscale("log"), ax.set_xlabel("D"), ax.set_ylabel(lab), ax.legend()
        fig.tight_layout()
        fig.savefig(a.out + ".png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
