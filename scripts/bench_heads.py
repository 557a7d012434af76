#!/usr/bin/env python
"""Benchmark the differentiable heads: forward + backward of one batch of episodes.

Compares, in the same run and on the same features:
  * GroupSparseSVMHead(solver="dual") vs the same head with solver="cvxpylayers"
    (cvxpylayers is measured on --cvxpy-episodes episodes and scaled per episode to
    the batch, and only for d <= --cvxpy-max-d: it is far too slow beyond);
  * SVMHead(solver="dual") (lambda1 = 0) vs SVMHead(solver="qpth") (learn2learn's
    SVClassifier, MetaOptNet's solver, one episode at a time, max_iters=15);
  * iterations and final relative duality gap of the custom solver.

Features (``--features``): ``synthetic`` non-negative "ResNet-like" vectors (ReLU of
Gaussians plus a shared non-negative component; unnormalised, entries O(0.1-1)), or
``resnet12``: a randomly initialised full-width ResNet-12 (train mode, as in
scripts/train_throughput.py) applied to random ``--image-size`` images (d = 640 *
(image_size / 16)^2, e.g. 2560 at 32x32; ``--dims`` is then ignored).  Real ResNet
features have norms ~90 and a Gram matrix whose top eigenvalue (the shared mean
direction) is ~60x the next: harder for the first-order solver than the synthetic
ones.  The solver's iteration count depends on the conditioning of X X^T.
``--cpu-threads`` is the dual heads' ``cpu_threads`` (0: torch's own thread count).

    .venv/bin/python scripts/bench_heads.py --out runs/bench_heads
    .venv/bin/python scripts/bench_heads.py --features resnet12 --image-size 32 --shots 5 --query 6
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from episodes.atomic import atomic_write_text  # noqa: E402
from metasparse.heads import GroupSparseSVMHead, SVMHead  # noqa: E402
from metasparse.plots import save_figure  # noqa: E402


def features(B, n, d, generator, device, dtype):
    x = torch.relu(torch.randn(B, n, d, generator=generator)) * 0.3
    x = x + torch.relu(torch.randn(B, 1, d, generator=generator)) * 0.5
    return x.to(device=device, dtype=dtype)


def class_images(templates, labels, generator):
    """Images of a synthetic class-structured world: the class template, randomly shifted
    by up to 1/8 of the size, plus pixel noise (so that meta-training has something to learn)."""
    m = labels.shape[0]
    size = templates.shape[-1]
    imgs = templates[labels]
    shift = torch.randint(-size // 8, size // 8 + 1, (2,), generator=generator)
    imgs = torch.roll(imgs, shifts=(int(shift[0]), int(shift[1])), dims=(-2, -1))
    return imgs + 0.5 * torch.randn(m, *imgs.shape[1:], generator=generator)


def meta_train(net, steps, way, shot, query, image_size, seed, device):
    """A short meta-training of ``net`` (MetaOptNet's SGD settings and 15-shot training
    episodes, SVM head) on a 64-class synthetic world (:func:`class_images`); returns
    the template bank."""
    from metasparse.engine.model import FewShotModel
    from metasparse.heads import SVMHead
    g = torch.Generator().manual_seed(seed + 1)
    # smooth random templates: low-resolution noise upsampled to the image size
    low = torch.randn(64, 3, 6, 6, generator=g)
    templates = torch.nn.functional.interpolate(low, size=image_size, mode="bilinear", align_corners=False)
    model = FewShotModel(net, SVMHead(C_reg=0.1)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in tqdm(range(steps), desc="meta-training the backbone", leave=False):
        classes = torch.randperm(64, generator=g)[:way]
        ys = torch.arange(way).repeat(shot)
        yq = torch.arange(way).repeat(query)
        s = class_images(templates, classes[ys], g)
        q = class_images(templates, classes[yq], g)
        logits, _ = model(s[None].to(device), ys[None].to(device), q[None].to(device), way)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, way), yq.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return templates


_TRAINED = {}


@torch.no_grad()
def resnet12_batch(B, way, shot, query, image_size, seed, device, dtype, train_steps=0):
    """Support / query features of a full-width ResNet-12 (train mode): randomly initialised
    on random images, or (``train_steps > 0``) after that many meta-training steps, on
    images of the world it was trained on."""
    from metasparse.backbones import build_backbone
    torch.manual_seed(seed)
    net = build_backbone("resnet12", widths=[64, 160, 320, 640], dropblock_size=5 if image_size >= 64 else 2)
    net = net.to(device).train()
    templates = None
    if train_steps:
        key = (image_size, seed, train_steps, str(device))
        if key not in _TRAINED:     # one meta-training per run, shared by the shot settings
            with torch.enable_grad():
                _TRAINED[key] = (meta_train(net, train_steps, way, 15, query, image_size, seed, device),
                                 net.state_dict())
        templates, state = _TRAINED[key]
        net.load_state_dict(state)
    g = torch.Generator().manual_seed(seed)
    feats = []
    for m in (way * shot, way * query):
        if templates is None:
            imgs = torch.randn(B * m, 3, image_size, image_size, generator=g)
        else:
            classes = torch.stack([torch.randperm(64, generator=g)[:way] for _ in range(B)])
            labels = classes[:, torch.arange(way).repeat(m // way)].reshape(-1)
            imgs = class_images(templates, labels, g)
        feats.append(net(imgs.to(device)).reshape(B, m, -1).to(dtype))
    labels = torch.arange(way).repeat(shot)[None].expand(B, -1).contiguous().to(device)
    qlabels = torch.arange(way).repeat(query)[None].expand(B, -1).contiguous().to(device)
    return feats[1], feats[0], labels, qlabels


def make_batch(B, way, shot, query, d, seed, device, dtype):
    g = torch.Generator().manual_seed(seed)
    support = features(B, way * shot, d, g, device, dtype)
    qry = features(B, way * query, d, g, device, dtype)
    labels = torch.arange(way).repeat(shot)[None].expand(B, -1).contiguous().to(device)
    qlabels = torch.arange(way).repeat(query)[None].expand(B, -1).contiguous().to(device)
    return qry, support, labels, qlabels


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(head, qry, support, labels, qlabels, way, device, repeats):
    """Median wall time of forward + backward (cross-entropy on the queries).

    Also records the median process CPU time in ``fwd_bwd.cpu`` (robust on a shared
    CPU machine when torch runs single-threaded)."""
    times, cpus, out = [], [], None
    for _ in range(repeats):
        s = support.clone().requires_grad_()
        q = qry.clone().requires_grad_()
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = head.predict(q, s, labels, way)
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, way), qlabels.reshape(-1))
        loss.backward()
        sync(device)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    times.sort()
    cpus.sort()
    fwd_bwd.cpu = cpus[len(cpus) // 2]
    return times[len(times) // 2], out


def gs_parts(head, qry, support, labels, way, device):
    """Median seconds of lambda_max and of the solve alone (forward, no autograd), and the
    relative error of the support gradient of the float32 head against the same head in
    float64 (the backward's face system runs in the inputs' precision)."""
    from metasparse.solvers import lambda_max
    from metasparse.solvers.objectives import one_hot
    Y = one_hot(labels, way, support.dtype)
    lm, solve = [], []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        lmax, Lam0 = lambda_max(support, Y, head.lambda2_value.item(), head.dual_reg, cpu_threads=head.solver.cpu_threads)
        sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            head.solver.run(support, Y, head.lambda_ratio_value.item() * lmax, head.lambda2_value.item(), head.dual_reg,
                            init=Lam0)
        sync(device)
        lm.append(t1 - t0)
        solve.append(time.perf_counter() - t1)

    def grad(dtype):
        s = support.to(dtype).clone().requires_grad_()
        h = copy.deepcopy(head).to(dtype)
        h(qry.to(dtype), s, labels, way).logsumexp(-1).sum().backward()
        return s.grad.double()

    g32, g64 = grad(torch.float32), grad(torch.float64)
    return {"gs_lambda_max_s": sorted(lm)[2], "gs_solve_s": sorted(solve)[2],
            "gs_grad_rel_err_f32": float((g32 - g64).norm() / g64.norm())}


def timed(fn, qry, support, labels, qlabels, way, device, repeats):
    """Median forward+backward seconds of a baseline ``fn(query, support, labels, way) -> (logits, W)``."""
    times, W = [], None
    for _ in range(repeats):
        s = support.clone().requires_grad_()
        q = qry.clone().requires_grad_()
        sync(device)
        t0 = time.perf_counter()
        logits, W = fn(q, s, labels, way)
        torch.nn.functional.cross_entropy(logits.reshape(-1, way), qlabels.reshape(-1)).backward()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], W.detach()


def published_baselines(args, qry, support, labels, qlabels, device, gs_out, svm_out):
    """Rows for the published heads on the same features, and every head's relative error of
    W* against an exact float64 solve (:func:`head_baselines.exact_solution`)."""
    from head_baselines import exact_solution, metaoptnet_svm_cs, paper_pgd_head, relative_w_error
    way, row = args.way, {}
    ref_gs = exact_solution(support, labels, way, args.lambda_ratio, args.lambda2, args.dual_reg)
    ref_svm = exact_solution(support, labels, way, 0.0, args.lambda2, args.dual_reg)
    err = lambda W, ref: float(relative_w_error(W.detach().double(), ref).max())
    row["gs_w_err"] = err(gs_out.fit.weights, ref_gs)
    row["svm_w_err"] = err(svm_out.fit.weights, ref_svm)
    # warm-up (imports, first-call allocations) outside the timings
    metaoptnet_svm_cs(qry[:1], support[:1], labels[:1], way, C_reg=1.0 / args.lambda2)
    paper_pgd_head(qry[:1], support[:1], labels[:1], way, n_steps=1, lambda_ratio=args.lambda_ratio,
                   lambda2=args.lambda2, dual_reg=args.dual_reg)
    t, W = timed(lambda q, s, l, w: metaoptnet_svm_cs(q, s, l, w, C_reg=1.0 / args.lambda2),
                 qry, support, labels, qlabels, way, device, args.repeats)
    row.update(metaoptnet_qpth_s=t, metaoptnet_qpth_w_err=err(W, ref_svm))
    for steps in args.pgd_steps:
        t, W = timed(lambda q, s, l, w: paper_pgd_head(q, s, l, w, n_steps=steps, lambda_ratio=args.lambda_ratio,
                                                        lambda2=args.lambda2, dual_reg=args.dual_reg),
                     qry, support, labels, qlabels, way, device, 1)
        row[f"paper_pgd{steps}_s"], row[f"paper_pgd{steps}_w_err"] = t, err(W, ref_gs)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--shots", type=int, nargs="+", default=[5, 15], help="n_support = way * shot")
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--dims", type=int, nargs="+", default=[640, 16000])
    p.add_argument("--lambda-ratio", type=float, default=0.01)
    p.add_argument("--lambda2", type=float, default=1.0)
    p.add_argument("--dual-reg", type=float, default=1.0)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cvxpy-episodes", type=int, default=1)
    p.add_argument("--cvxpy-max-d", type=int, default=640)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--published", action="store_true",
                   help="also run the published heads (scripts/head_baselines.py): MetaOptNet's SVM-CS "
                        "with qpth batched over the episodes, and the paper's projected-gradient head "
                        "with torchopt implicit differentiation (pip install metasparse[bench]); "
                        "accuracy as the relative error of W* against an exact solve")
    p.add_argument("--pgd-steps", type=int, nargs="+", default=[5, 100, 1000],
                   help="--published: step counts of the paper's head (its default is 5)")
    p.add_argument("--features", choices=["synthetic", "resnet12"], default="synthetic")
    p.add_argument("--image-size", type=int, default=32, help="--features resnet12: input images")
    p.add_argument("--train-steps", type=int, default=0,
                   help="--features resnet12: meta-train the backbone this many steps first (5-way, "
                        "SVM head, synthetic class-structured images), then take the features of that world")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="dual heads' cpu_threads (intra-op threads of the solve on CPU; 0: torch's setting)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.float32
    rows = []
    threads = None if args.cpu_threads == 0 else args.cpu_threads
    resnet = args.features == "resnet12"
    configs = [(s, d) for s in args.shots for d in ([None] if resnet else args.dims)]
    for shot, d in tqdm(configs, desc="configs"):
        n = args.way * shot
        if resnet:
            qry, support, labels, qlabels = resnet12_batch(args.episodes, args.way, shot, args.query,
                                                           args.image_size, 0, device, dtype, args.train_steps)
            d = support.shape[-1]
        else:
            qry, support, labels, qlabels = make_batch(args.episodes, args.way, shot, args.query, d, 0, device, dtype)
        row = {"n_support": n, "d": d, "episodes": args.episodes}
        gs = GroupSparseSVMHead(lambda_ratio=args.lambda_ratio, lambda2=args.lambda2,
                                dual_reg=args.dual_reg, tol=args.tol, cpu_threads=threads).to(device)
        fwd_bwd(gs, qry, support, labels, qlabels, args.way, device, 1)          # warm-up
        t, out = fwd_bwd(gs, qry, support, labels, qlabels, args.way, device, args.repeats)
        rel = out.fit.rel_gap.detach().double()
        row.update(gs_dual_s=t, gs_dual_cpu=fwd_bwd.cpu, gs_iters_max=int(out.fit.n_iter.max()),
                   gs_rel_gap_max=float(rel.max()), gs_rel_gap_median=float(rel.median()),
                   gs_rel_gaps=[float(v) for v in rel],
                   gs_converged=int(out.fit.converged.sum()) if out.fit.converged is not None else None,
                   gs_unused=float(out.fit.unused_fraction.mean()))
        gs_out = out
        row.update(gs_parts(gs, qry, support, labels, args.way, device))
        svm = SVMHead(C_reg=1.0 / args.lambda2, tol=args.tol, cpu_threads=threads).to(device)
        fwd_bwd(svm, qry, support, labels, qlabels, args.way, device, 1)
        t, out = fwd_bwd(svm, qry, support, labels, qlabels, args.way, device, args.repeats)
        row.update(svm_dual_s=t, svm_dual_cpu=fwd_bwd.cpu, svm_iters_max=int(out.fit.n_iter.max()),
                   svm_rel_gap_max=float(out.fit.rel_gap.max()),
                   gs_over_svm=row["gs_dual_s"] / t, gs_over_svm_cpu=row["gs_dual_cpu"] / fwd_bwd.cpu)
        if args.published:
            row.update(published_baselines(args, qry, support, labels, qlabels, device, gs_out, out))
        if not args.no_baselines:
            qp = SVMHead(C_reg=1.0 / args.lambda2, solver="qpth", max_iters=15).to(device)
            t, out_qp = fwd_bwd(qp, qry, support, labels, qlabels, args.way, device, args.repeats)
            row.update(svm_qpth_s=t, svm_qpth_cpu=fwd_bwd.cpu, svm_speedup=t / row["svm_dual_s"],
                       svm_speedup_cpu=fwd_bwd.cpu / row["svm_dual_cpu"],
                       svm_vs_qpth_max_logit_diff=float((out.logits - out_qp.logits).detach().abs().max()))
            if d <= args.cvxpy_max_d:
                m = args.cvxpy_episodes
                cv = GroupSparseSVMHead(lambda_ratio=args.lambda_ratio, lambda2=args.lambda2,
                                        dual_reg=args.dual_reg, solver="cvxpylayers").to(device)
                t, _ = fwd_bwd(cv, qry[:m], support[:m], labels[:m], qlabels[:m], args.way, device, 1)
                row.update(gs_cvxpylayers_s_scaled=t * args.episodes / m, cvxpy_measured_episodes=m,
                           gs_cvxpylayers_cpu_scaled=fwd_bwd.cpu * args.episodes / m,
                           gs_speedup=t * args.episodes / m / row["gs_dual_s"],
                           gs_speedup_cpu=fwd_bwd.cpu * args.episodes / m / row["gs_dual_cpu"])
        rows.append(row)
        tqdm.write(json.dumps(row))

    machine = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"threads {torch.get_num_threads()}, device {device}"
               + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    md = [f"Machine: {machine}; B={args.episodes} episodes, {args.way}-way, {args.query} queries/class, "
          f"float32, {args.features} features{f' after {args.train_steps} meta-training steps' if args.train_steps else ''}, solver cpu_threads={threads}, lambda_ratio={args.lambda_ratio}, lambda2={args.lambda2}, dual_reg={args.dual_reg}, "
          f"tol={args.tol}. Times: median forward+backward seconds per batch.", "",
          "| n_support | d | GS dual s (cpu s) | iters | max rel gap | unused | GS cvxpylayers s, scaled (cpu s) "
          "| speedup wall (cpu) | SVM dual s (cpu s) | iters | max rel gap | SVM qpth s (cpu s) | speedup wall (cpu) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda r, k, fmt: (fmt % r[k]) if k in r else "n/a"
    for r in rows:
        md.append(f"| {r['n_support']} | {r['d']} | {r['gs_dual_s']:.3f} ({r['gs_dual_cpu']:.3f}) | "
                  f"{r['gs_iters_max']} | {r['gs_rel_gap_max']:.1e} | {r['gs_unused']:.2f} | "
                  f"{f(r, 'gs_cvxpylayers_s_scaled', '%.1f')} ({f(r, 'gs_cvxpylayers_cpu_scaled', '%.1f')}) | "
                  f"{f(r, 'gs_speedup', '%.0fx')} ({f(r, 'gs_speedup_cpu', '%.0fx')}) | "
                  f"{r['svm_dual_s']:.3f} ({r['svm_dual_cpu']:.3f}) | {r['svm_iters_max']} | "
                  f"{r['svm_rel_gap_max']:.1e} | {f(r, 'svm_qpth_s', '%.3f')} ({f(r, 'svm_qpth_cpu', '%.3f')}) | "
                  f"{f(r, 'svm_speedup', '%.1fx')} ({f(r, 'svm_speedup_cpu', '%.1fx')}) |")
    md += ["", "Group-sparse head vs SVM head, same features, same run (forward + backward):", "",
           "| n_support | d | GS s | SVM s | GS / SVM (wall) | GS / SVM (cpu) | GS converged | GS rel gap median | GS rel gap max "
           "| GS lambda_max s / solve s | GS grad f32 vs f64 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n_support']} | {r['d']} | {r['gs_dual_s']:.3f} | {r['svm_dual_s']:.3f} | "
                  f"{r['gs_over_svm']:.2f}x | {r['gs_over_svm_cpu']:.2f}x | {r['gs_converged']}/{r['episodes']} | "
                  f"{r['gs_rel_gap_median']:.1e} | {r['gs_rel_gap_max']:.1e} | "
                  f"{r['gs_lambda_max_s']:.4f} / {r['gs_solve_s']:.3f} | {r['gs_grad_rel_err_f32']:.1e} |")
    if any("gs_w_err" in r for r in rows):
        steps = args.pgd_steps
        md += ["", "Published heads on the same features (max over episodes of ||W - W*|| / ||W*||, W* an exact "
               "float64 solve; seconds forward + backward):", "",
               "| n_support | d | ours GS err | ours SVM err | MetaOptNet qpth batched s (err) | "
               + " | ".join(f"paper PGD {k} steps s (err)" for k in steps) + " |",
               "|---|---|---|---|---|" + "---|" * len(steps)]
        for r in rows:
            if "gs_w_err" not in r:
                continue
            md.append(f"| {r['n_support']} | {r['d']} | {r['gs_w_err']:.1e} | {r['svm_w_err']:.1e} | "
                      f"{r['metaoptnet_qpth_s']:.3f} ({r['metaoptnet_qpth_w_err']:.1e}) | "
                      + " | ".join(f"{r[f'paper_pgd{k}_s']:.3f} ({r[f'paper_pgd{k}_w_err']:.1e})" for k in steps) + " |")
    text = "\n".join(md)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, content in (("results.json", json.dumps({"args": vars(args), "machine": machine,
                                                            "rows": rows}, indent=2)),
                              ("results.md", text + "\n")):
            atomic_write_text(os.path.join(args.out, name), content)
        plot(rows, os.path.join(args.out, "bench_heads.png"), machine)


def plot(rows, path, machine):
    """Grouped bars (log scale): forward+backward seconds per batch for each solver."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = [("gs_dual_s", "group-sparse: custom dual"), ("gs_cvxpylayers_s_scaled", "group-sparse: cvxpylayers (scaled)"),
              ("svm_dual_s", "SVM-CS: custom dual"), ("svm_qpth_s", "SVM-CS: learn2learn qpth")]
    labels = [f"n={r['n_support']}\nd={r['d']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.2
    for i, (key, name) in enumerate(series):
        xs = [j + (i - 1.5) * w for j, r in enumerate(rows) if key in r]
        ys = [r[key] for r in rows if key in r]
        if ys:
            ax.bar(xs, ys, width=w, label=name)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward, s per batch")
    ax.set_title(machine, fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
