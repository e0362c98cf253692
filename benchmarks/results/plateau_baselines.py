"""Context-free and cheap-context baselines for masked-residue prediction on a corpus test split.
unigram; own-composition (the crop's visible residues, Dirichlet prior = unigram x alpha);
neighbour bigram (left and right residue, from train counts)."""
import sys, numpy as np
from proteinperf.data import ProteinCorpus, get_alphabet
from proteinperf.data.sampling import crop_framed, mlm_example
path, L = sys.argv[1], int(sys.argv[2])
a = get_alphabet(); V = len(a.all_toks) if hasattr(a,'all_toks') else 33
tr, te = ProteinCorpus(path, "train"), ProteinCorpus(path, "test")
cnt = tr.token_counts().astype(float) + 1
res = np.asarray(a.residue_token_ids)
uni = np.zeros_like(cnt); uni[res] = cnt[res]; uni /= uni.sum()
# bigram-context counts over a train sample: p(x | left, right)
rng = np.random.default_rng(0)
tri = np.ones((cnt.size, cnt.size, cnt.size)) * 1e-3
for i in rng.choice(len(tr), min(len(tr), 20000), replace=False):
    t = tr.tokens(int(i)).astype(int)
    np.add.at(tri, (t[:-2], t[1:-1], t[2:]), 1)  # (left, mid, right)
stats = {k: [0, 0.0] for k in ("unigram", "composition", "neighbours", "comp+neigh")}
n = 0
for i in range(len(te)):
    toks = crop_framed(te.tokens(i), L, None)
    inp, tgt = mlm_example(toks, np.random.default_rng([0, 2**31 - 1, i, 1]), 0.15, corrupt=False)
    sel = np.flatnonzero(tgt != -100)
    vis = inp[(inp != a.mask_idx)]
    comp = np.bincount(vis, minlength=cnt.size).astype(float)
    for alpha in (20.0,):
        p_comp = (comp * (np.isin(np.arange(cnt.size), res)) + alpha * uni) ; p_comp /= p_comp.sum()
    for j in sel:
        y = toks[j]
        left, right = inp[j - 1] if j > 0 else a.cls_idx, inp[j + 1] if j + 1 < inp.size else a.eos_idx
        pn = tri[left, :, right] * np.isin(np.arange(cnt.size), res); pn = pn / pn.sum()
        pc = p_comp * pn / uni.clip(1e-12); pc[~np.isin(np.arange(cnt.size), res)] = 0; pc /= pc.sum()
        for k, p in (("unigram", uni), ("composition", p_comp), ("neighbours", pn), ("comp+neigh", pc)):
            stats[k][0] += int(p.argmax() == y); stats[k][1] += -np.log(max(p[y], 1e-12))
        n += 1
for k, (c, nll) in stats.items():
    print(f"{k:12s} acc {c/n:.4f}  ppl {np.exp(nll/n):.2f}  (n={n})")
