"""Make the Cheb-GR re-ranking golden from Fast-GCR's own functions (run by hand).

    python tests/golden/make_chebgr_golden.py --fastgcr /path/to/Jinxi-Yang-WHU/Fast-GCR

The reference checkout stays outside this repository; nothing of it is committed. Its
`utils/re_ranking.py` and `utils/cmc.py` are imported from the checkout (the checkout root goes on
sys.path, as the repository's own `import utils.cmc` needs). The repository ships no configuration:
`_cfg` is a namespace with the GCR fields the functions read (GCR.WITH_GPU False, GCR.ENABLE_GCR
True, BETA1, LAMBDA1, GAL_ROUND, MODE; BETA2, LAMBDA2, SCALE are read but unused; COMMON.VERBOSE
False). `labels` only feeds an unused camera index; it gets the identities. NumPy 2 removed
`np.in1d`, which `GetMAP` / `GetRanks` call: it is set to `np.isin` (the same function).

Cases (float32 unit features, seeded; queries first):
    small_nonsym   6 queries, 30 gallery, 16-d, LAMBDA1 1.0, BETA1 0.16, GAL_ROUND 3, MODE nonsym
    small_nonorm   the same features, MODE no-norm, GAL_ROUND 2
    large_nonsym   40 queries, 160 gallery, 64-d, LAMBDA1 1.0, BETA1 0.16, GAL_ROUND 3, MODE nonsym
    large_sym      the same features, LAMBDA1 1.5, BETA1 0.1, GAL_ROUND 2, MODE sym
Stored per case: `<case>.dist` = `fast_gcrv_image`'s (Nq, Ng) float64 distances; per size the
inputs `<size>.query`, `<size>.gallery`. Metric check: a synthetic retrieval set (`retr.feats`,
`retr.ids`, `retr.cams`, the first `retr.nq` rows are the queries) scored by `GetMAP` and
`GetRanks(top=10)` with separate_camera=True on the plain distances (`ComputeEuclid2`) and on
`large_nonsym`'s settings' re-ranked ones: `retr.plain_metrics`, `retr.rerank_metrics`
(mAP, rank-1, rank-5, rank-10), float64.
Output: tests/golden/chebgr_small.safetensors.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = Path(__file__).parent
CASES = {
    "small_nonsym": ("small", {"LAMBDA1": 1.0, "BETA1": 0.16, "GAL_ROUND": 3, "MODE": "nonsym"}),
    "small_nonorm": ("small", {"LAMBDA1": 1.0, "BETA1": 0.16, "GAL_ROUND": 2, "MODE": "no-norm"}),
    "large_nonsym": ("large", {"LAMBDA1": 1.0, "BETA1": 0.16, "GAL_ROUND": 3, "MODE": "nonsym"}),
    "large_sym": ("large", {"LAMBDA1": 1.5, "BETA1": 0.1, "GAL_ROUND": 2, "MODE": "sym"}),
}
SIZES = {"small": (6, 30, 16), "large": (40, 160, 64)}


def cfg(LAMBDA1, BETA1, GAL_ROUND, MODE):
    gcr = types.SimpleNamespace(WITH_GPU=False, ENABLE_GCR=True, BETA1=BETA1, BETA2=BETA1, LAMBDA1=LAMBDA1,
                                LAMBDA2=LAMBDA1, SCALE=0.7, GAL_ROUND=GAL_ROUND, MODE=MODE)
    return types.SimpleNamespace(GCR=gcr, COMMON=types.SimpleNamespace(VERBOSE=False))


def retrieval_set(seed: int = 7, n_ids: int = 30, n_cams: int = 3, per_cam: int = 2, dim: int = 32,
                  cam_shift: float = 0.6, noise: float = 0.9):
    """Identities (unit centres) seen by cameras (a shift shared by every identity) with noise.
    Queries: the first image of each identity under camera 0; gallery: every other image."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_ids, dim, generator=g), dim=1)
    shifts = cam_shift * F.normalize(torch.randn(n_cams, dim, generator=g), dim=1)
    ids, cams, feats = [], [], []
    for i in range(n_ids):
        for c in range(n_cams):
            for _ in range(per_cam):
                feats.append(centres[i] + shifts[c] + noise * torch.randn(dim, generator=g) / dim**0.5)
                ids.append(i)
                cams.append(c)
    feats = F.normalize(torch.stack(feats), dim=1)
    ids, cams = torch.tensor(ids), torch.tensor(cams)
    q = torch.tensor([i * n_cams * per_cam for i in range(n_ids)])
    rest = torch.tensor([j for j in range(len(ids)) if j not in set(q.tolist())])
    order = torch.cat([q, rest])
    return feats[order], ids[order], cams[order], len(q)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fastgcr", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=HERE / "chebgr_small.safetensors")
    args = ap.parse_args()

    np.in1d = np.isin  # NumPy 2 removed in1d; cmc.py calls it
    sys.path.insert(0, str(args.fastgcr))
    from utils import cmc
    from utils.re_ranking import fast_gcrv_image

    out: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(20250716)
    feats = {}
    for size, (nq, ng, d) in SIZES.items():
        q = F.normalize(torch.randn(nq, d, generator=g), dim=1)
        gal = F.normalize(torch.randn(ng, d, generator=g), dim=1)
        # a little cluster structure, so the adaptive neighbourhoods are not all alike
        gal[: ng // 2] = F.normalize(gal[: ng // 2] + 0.8 * q.repeat(ng // (2 * nq) + 1, 1)[: ng // 2], dim=1)
        feats[size] = (q, gal)
        out[f"{size}.query"], out[f"{size}.gallery"] = q, gal
    for case, (size, c) in CASES.items():
        q, gal = feats[size]
        labels = np.arange(len(q) + len(gal))
        sims, _, _ = fast_gcrv_image(cfg(**c), [q.clone(), labels[: len(q)], None, gal.clone(),
                                                labels[len(q):], None])
        out[f"{case}.dist"] = torch.from_numpy(np.asarray(sims, dtype=np.float64))
        print(case, tuple(out[f"{case}.dist"].shape))

    x, ids, cams, nq = retrieval_set()
    out["retr.feats"], out["retr.ids"], out["retr.cams"] = x, ids, cams
    out["retr.nq"] = torch.tensor(nq)
    lab = np.stack([ids.numpy(), cams.numpy()], 1)
    plain = cmc.ComputeEuclid2(x[:nq], x[nq:], 1)
    c = cfg(**CASES["large_nonsym"][1])
    rer, _, _ = fast_gcrv_image(c, [x[:nq].clone(), lab[:nq, 0], None, x[nq:].clone(), lab[nq:, 0], None])
    for name, dist in (("plain", plain), ("rerank", np.asarray(rer))):
        m = cmc.GetMAP(dist, lab[:nq], lab[nq:], True)
        r = cmc.GetRanks(dist, lab[:nq], lab[nq:], 10, True)
        out[f"retr.{name}_metrics"] = torch.tensor([m, *r], dtype=torch.float64)
        print(f"{name} mAP {m:.4f} rank1 {r[0]:.4f} rank5 {r[1]:.4f} rank10 {r[2]:.4f}")
    save_file({k: v.contiguous() for k, v in out.items()}, str(args.out))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
