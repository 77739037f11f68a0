"""Make the graph-module goldens from LPOSS's graph functions (run by hand).

    PYTHONPATH=<dir holding kornia 0.7.4> python tests/golden/make_graphs_golden.py \
        --lposs /path/to/vladan-stojnic/LPOSS

The reference checkout stays outside this repository; nothing of it is committed.
`segmentation/evaluation/lposs_eval.py` is loaded by path. Its GPU libraries are replaced by CPU
stand-ins with the same semantics: `cupy` -> numpy, `cupyx.scipy.sparse` -> scipy.sparse,
`cupyx.scipy.sparse.linalg.cg` -> a line-by-line numpy transcription of cupy's `cg` (x0 = 0,
r = b, atol = tol * |b|, stop when |r| <= atol, at most maxiter steps), `faiss.knn_gpu` -> exact
inner-product top-k (torch.topk); mmseg's `resize` -> F.interpolate and `EncoderDecoder` ->
nn.Module (both unused here). kornia is the real one (0.7.4, the version LPOSS pins).

Cases (float32 inputs, seeded):
    patch   get_lposs_laplacian on 3 windows of a 4x4 grid (patch 16, window offsets (0,0),
            (0,32), (32,16)), 48 unit 24-d features, k 20, sigma 0.01, pix_dist_pow 1, gamma 3,
            alpha 0.95; then perform_lp on 48x5 seeds. Stored: inputs, the Laplacian (dense) and
            the LP output.
    pixel   get_lposs_plus_laplacian on a 20x24 RGB [0,1] image (blocks + noise), tau 0.01,
            neigh 6 (r 13), alpha 0.95, and perform_lp on 480x5 seeds. Stored: inputs, the first
            72 rows of the Laplacian (dense) and the LP output.
Output: tests/golden/graphs_lposs.safetensors.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module


def cupy_cg(A, b, x0=None, tol=1e-5, maxiter=None, M=None, callback=None, atol=None):
    """cupyx.scipy.sparse.linalg.cg transcribed to numpy (no preconditioner)."""
    b = np.asarray(b).astype(A.dtype).ravel()
    n = A.shape[0]
    if maxiter is None:
        maxiter = n * 10
    x = np.zeros((n,), dtype=A.dtype)
    b_norm = np.linalg.norm(b)
    if b_norm == 0:
        return b, 0
    atol = tol * float(b_norm) if atol is None else max(float(atol), tol * float(b_norm))
    r = b - A @ x
    iters, rho, p = 0, 0, None
    while iters < maxiter:
        z = r
        rho1 = rho
        rho = np.dot(r, z)
        p = z if iters == 0 else z + (rho / rho1) * p
        q = A @ p
        alpha = rho / np.dot(p, q)
        x = x + alpha * p
        r = r - alpha * q
        iters += 1
        resid = np.linalg.norm(r)
        if resid <= atol:
            break
    return x, 0


def install_stubs() -> None:
    cp = types.ModuleType("cupy")
    for name in ("array", "asarray", "zeros", "isnan", "isinf", "sqrt"):
        setattr(cp, name, getattr(np, name))
    sys.modules["cupy"] = cp
    cpx = types.ModuleType("cupyx")
    cpx_scipy = types.ModuleType("cupyx.scipy")
    cpx_sparse = types.ModuleType("cupyx.scipy.sparse")
    cpx_sparse.csr_matrix = sp.csr_matrix
    cpx_sparse.diags = sp.diags
    cpx_sparse.eye = sp.eye
    cpx_sparse.coo_matrix = sp.coo_matrix
    cpx_linalg = types.ModuleType("cupyx.scipy.sparse.linalg")
    cpx_linalg.cg = cupy_cg
    cpx_sparse.linalg = cpx_linalg
    sys.modules.update({"cupyx": cpx, "cupyx.scipy": cpx_scipy, "cupyx.scipy.sparse": cpx_sparse,
                        "cupyx.scipy.sparse.linalg": cpx_linalg})
    faiss = types.ModuleType("faiss")

    class _Res:
        def setDefaultNullStreamAllDevices(self):
            pass

        def setTempMemory(self, n):
            pass

    def knn_gpu(res, xq, xb, k, metric=None):
        v, i = (xq @ xb.T).topk(k, dim=1)
        return v, i

    faiss.StandardGpuResources = _Res
    faiss.knn_gpu = knn_gpu
    faiss.METRIC_INNER_PRODUCT = 0
    contrib = types.ModuleType("faiss.contrib")
    tu = types.ModuleType("faiss.contrib.torch_utils")
    sys.modules.update({"faiss": faiss, "faiss.contrib": contrib, "faiss.contrib.torch_utils": tu})
    mmseg = types.ModuleType("mmseg")
    ops = types.ModuleType("mmseg.ops")
    ops.resize = lambda input, size=None, mode="nearest", align_corners=None, warning=True: F.interpolate(
        input, size=size, mode=mode, align_corners=align_corners)
    models = types.ModuleType("mmseg.models")
    models.EncoderDecoder = torch.nn.Module
    sys.modules.update({"mmseg": mmseg, "mmseg.ops": ops, "mmseg.models": models})


def load_lposs_eval(root: Path):
    install_stubs()
    try:
        import kornia_rs  # noqa: F401
    except ImportError:  # kornia.io needs it at import; rgb_to_lab does not
        sys.modules["kornia_rs"] = types.ModuleType("kornia_rs")
    return load_module("ref_lposs_eval", root / "segmentation" / "evaluation" / "lposs_eval.py")


def perform_lp_cpu(ref, L, preds: torch.Tensor) -> torch.Tensor:
    """The reference's perform_lp without its final move to CUDA."""
    out = np.zeros(preds.shape)
    p = preds.numpy()
    for c in range(p.shape[1]):
        out[:, c] = ref.dfs_search(L, p[:, c])
    return torch.as_tensor(out)


def block_image(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    img = torch.zeros(1, 3, h, w)
    for y in range(0, h, 6):
        for x in range(0, w, 8):
            img[0, :, y:y + 6, x:x + 8] = torch.rand(3, 1, 1, generator=g)
    return (img + 0.03 * torch.randn(img.shape, generator=g)).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lposs", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = load_lposs_eval(args.lposs)
    g = torch.Generator().manual_seed(20250301)
    out = {}
    # patch graph
    feats = F.normalize(torch.randn(48, 24, generator=g), dim=-1)
    locations = torch.tensor([[0, 64, 0, 64], [0, 64, 32, 96], [32, 96, 16, 80]], dtype=torch.float32)
    grids = [(4, 4)] * 3
    L = ref.get_lposs_laplacian(feats, locations, grids, sigma=0.01, pix_dist_pow=1.0, k=20, gamma=3.0,
                                alpha=0.95, patch_size=16)
    seeds = 0.2 + 0.05 * torch.randn(48, 5, generator=g)
    lp = perform_lp_cpu(ref, L, seeds)
    out.update({"patch.feats": feats, "patch.locations": locations, "patch.seeds": seeds,
                "patch.L": torch.as_tensor(L.toarray()), "patch.lp": lp})
    # pixel graph
    img = block_image(20, 24, g)
    pseeds = 0.2 + 0.05 * torch.randn(20 * 24, 5, generator=g)
    Lp = ref.get_lposs_plus_laplacian(img, pseeds, tau=0.01, neigh=6, alpha=0.95)
    lpp = perform_lp_cpu(ref, Lp, pseeds)
    out.update({"pixel.image": img, "pixel.seeds": pseeds, "pixel.L_rows": torch.as_tensor(Lp[:72].toarray()),
                "pixel.lp": lpp})
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, str(HERE / "graphs_lposs.safetensors"))
    print({k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
