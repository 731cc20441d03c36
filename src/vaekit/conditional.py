"""What a conditional model does with its labels, measured (issue 16): the report's conditional section and
benchmarks/conditional.py call these.

    label_grid(model, n, g)              (K * n, *shape) samples, n per label, label-major (row c = label c)
    restyle(model, x, y)                 (B, K, *shape): each x encoded with its own label, decoded under every label
    label_accuracy(model, clf, n)        the classifier's agreement with the requested label of n samples per label
    restyle_consistency(model, clf, x, y)  its agreement with the target label of restyled digits
    label_log_likelihoods(model, x, k)   (B, K) importance-sampled log p(x|y=c) for every label c
    label_nats(cmodel, ds, k, log_py, umodel)   what the label is worth in nats, and the model as a classifier
    label_prior(model, kind)             log p(y): the training label frequencies, or uniform

The decomposition of the gap between an unconditional model's -log p_u(x) and a conditional model's
-log p_c(x|y): with the conditional model's own marginal p_c(x) = sum_y p(y) p_c(x|y),

    log p_c(x|y) - log p_u(x) = [log p_c(x|y) - log p_c(x)] + [log p_c(x) - log p_u(x)]
                              = [log p_c(y|x) - log p(y)]   + [a better model of x]

(Bayes: p_c(x|y) / p_c(x) = p_c(y|x) / p(y)). The first term is the information the label adds about x
under the model, at most -log p(y) (log K = 2.30 nats for 10 equally frequent labels); the second is
whatever the conditional model models better about x itself. All per example, in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vaekit import seeds
from vaekit.errors import VaekitError
from vaekit.evaluate import eval_batches, log_likelihood


def _check_conditional(model) -> int:
    if not getattr(model, "conditional", False):
        raise VaekitError("this model is not conditional: it takes no labels (train with --conditional)")
    return model.num_classes


@torch.inference_mode()
def label_grid(model, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
    """n decoded prior draws per label, (K * n, *shape): draws c*n .. c*n + n - 1 have label c."""
    k = _check_conditional(model)
    return model.sample(k * n, generator, y=torch.arange(k).repeat_interleave(n), temperature=temperature)


@torch.inference_mode()
def restyle(model, x: torch.Tensor, y) -> torch.Tensor:
    """Each x (B, *shape) encoded with its own label y (B,) at its posterior mean z, and z decoded under every
    label: the decoded means (B, K, *shape), [b, c] = E[x | z_b, label c]. z carries the style, c the class."""
    k = _check_conditional(model)
    z = model.encode(x, y).mean  # (B, D)
    out = model.decode(z.expand(k, *z.shape), torch.arange(k)[:, None]).mean  # (K, B, *shape)
    return out.transpose(0, 1)


def confusion(target: torch.Tensor, pred: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Counts (rows, cols) int64: [i, j] = how many examples of target label i were predicted j."""
    return torch.bincount(target.long() * cols + pred.long(), minlength=rows * cols).view(rows, cols)


@dataclass
class Agreement:
    """A classifier's verdicts on images generated for target labels."""

    per_label: torch.Tensor  # (K,) float64: the fraction of the images for label c that it calls c
    confusion: torch.Tensor  # (K, C) int64 counts: row = target label, column = the classifier's label
    accuracy: float  # over all images
    n: int  # images per target label

    @property
    def worst(self) -> tuple[int, float]:
        """The label with the lowest agreement and that agreement."""
        c = int(self.per_label.argmin())
        return c, float(self.per_label[c])


def _agreement(target: torch.Tensor, pred: torch.Tensor, k: int, classes: int, n: int) -> Agreement:
    """target, pred (N,) labels; classes >= k (_check_classifier)."""
    m = confusion(target, pred, k, classes)  # (K, C)
    per_label = m.diagonal().double() / m.sum(1).clamp(min=1).double()  # diagonal: min(K, C) = K entries
    return Agreement(per_label, m, float((target == pred).double().mean()), n)


def _check_classifier(model, clf) -> int:
    classes = clf.config.classes
    if tuple(clf.config.input_shape) != tuple(model.config.input_shape):
        raise VaekitError(
            f"the classifier takes images of shape {tuple(clf.config.input_shape)}, the model makes "
            f"{tuple(model.config.input_shape)}"
        )
    if classes < model.num_classes:
        raise VaekitError(f"the classifier knows {classes} classes, fewer than the model's {model.num_classes}")
    return classes


def _judged_samples(model, clf, n_per_label: int, seed: int, temperature: float, batch: int, features: bool):
    """n_per_label samples of each label at `temperature` (seeded by seeds.generated(seed)), judged by the
    classifier: (target (K * n,), pred (K * n,), the classifier's hidden features (K * n, F) or None)."""
    k = _check_conditional(model)
    g = torch.Generator().manual_seed(seeds.generated(seed))
    target = torch.arange(k).repeat_interleave(n_per_label)
    preds, feats = [], []
    for t in target.split(batch):
        x = model.sample(len(t), g, y=t, temperature=temperature)
        preds.append(clf.predict(x).cpu())
        if features:
            feats.append(clf.embed(x).cpu())
    return target, torch.cat(preds), torch.cat(feats) if features else None


@torch.inference_mode()
def label_accuracy(
    model, clf, n_per_label: int = 1000, seed: int = 0, batch: int = 2000, temperature: float = 1.0
) -> Agreement:
    """The classifier's (any module with .config.classes and .predict(x) -> (B,) labels) agreement with the
    requested label over n_per_label samples of each label (seeded by seeds.generated(seed)), drawn at
    `temperature` (Prior.sample; 1 = the prior)."""
    k, classes = _check_conditional(model), _check_classifier(model, clf)
    target, pred, _ = _judged_samples(model, clf, n_per_label, seed, temperature, batch, False)
    return _agreement(target, pred, k, classes, n_per_label)


@dataclass
class TemperaturePoint:
    """label_accuracy at one sampling temperature, and what the lower temperature costs in variety."""

    temperature: float
    accuracy: Agreement
    frechet: float  # Frechet distance of the classifier's features of all K * n samples to those of real digits


@torch.inference_mode()
def temperature_sweep(
    model, clf, x_real: torch.Tensor, temperatures=(1.0, 0.8, 0.7, 0.6, 0.5), n_per_label: int = 1000, seed: int = 0
) -> list[TemperaturePoint]:
    """label_accuracy at each temperature (the same draws eps, scaled), with the Frechet distance of the
    samples to real digits x_real (M, *shape): a low temperature buys label accuracy with variety, which the
    distance shows once the samples crowd around each label's typical digit. `clf` also needs .embed(x) ->
    (B, F) features (classifier.Classifier has it)."""
    from vaekit.classifier import feature_frechet

    k, classes = _check_conditional(model), _check_classifier(model, clf)
    real = clf.embed(x_real).cpu()
    out = []
    for t in temperatures:
        target, pred, feats = _judged_samples(model, clf, n_per_label, seed, float(t), 2000, True)
        out.append(
            TemperaturePoint(float(t), _agreement(target, pred, k, classes, n_per_label), feature_frechet(feats, real))
        )
    return out


@dataclass
class Consistency(Agreement):
    """Agreement on restyled digits; `transfers` excludes each digit's own label (a mere reconstruction)."""

    transfers: float = math.nan  # agreement over the (B, K - 1) decodes under another label


@torch.inference_mode()
def restyle_consistency(model, clf, x: torch.Tensor, y: torch.Tensor, batch: int = 200) -> Consistency:
    """The classifier's agreement with the target label of restyle(model, x, y): x (B, *shape) greyscale test
    digits with labels y (B,), each decoded under all K labels (B * K images)."""
    k = _check_conditional(model)
    classes = _check_classifier(model, clf)
    preds = []
    for i in range(0, len(x), batch):
        imgs = restyle(model, x[i : i + batch], y[i : i + batch])  # (b, K, *shape)
        preds.append(clf.predict(imgs.flatten(0, 1)).view(-1, k).cpu())
    pred = torch.cat(preds)  # (B, K)
    target = torch.arange(k).expand_as(pred)
    a = _agreement(target.flatten(), pred.flatten(), k, classes, len(x))
    other = target != y.cpu()[:, None]
    transfers = float((pred == target)[other].double().mean()) if other.any() else math.nan
    return Consistency(a.per_label, a.confusion, a.accuracy, a.n, transfers)


# ------------------------------------------------------------------------------------------- nats


def label_prior(model, kind: str = "train") -> torch.Tensor:
    """log p(y), (K,) float64: "train" = the label frequencies of the training split of the model's run data
    (every label seen at least once, else uniform), "uniform" = log 1/K."""
    from vaekit.data import load

    k = _check_conditional(model)
    if kind == "uniform":
        return torch.full((k,), -math.log(k), dtype=torch.float64)
    if kind != "train":
        raise VaekitError(f"label prior must be 'train' or 'uniform', got {kind!r}")
    y = load(model.run_config.train.data, "train").y
    counts = torch.bincount(y, minlength=k)[:k].double() if y is not None else torch.zeros(k)
    return (counts / counts.sum()).log() if (counts > 0).all() else label_prior(model, "uniform")


@torch.inference_mode()
def label_log_likelihoods(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(x|y=c) for every label c, importance-sampled with k samples each: (B, K) float64, nats."""
    n = _check_conditional(model)
    cols = [log_likelihood(model.given(c), x, k, generator=generator) for c in range(n)]
    return torch.stack(cols, 1).double()


def marginal_log_likelihood(log_pxy: torch.Tensor, log_py: torch.Tensor) -> torch.Tensor:
    """log p(x) = logsumexp_y [log p(y) + log p(x|y)]: log_pxy (B, K), log_py (K,) -> (B,)."""
    return torch.logsumexp(log_pxy + log_py.to(log_pxy), -1)


@dataclass
class LabelNats:
    """What the label is worth, nats per example (means over n examples); None without an unconditional model."""

    n: int
    k: int  # importance samples per (example, label)
    prior: str  # "train" or "uniform"
    nll_given: float  # -log p_c(x|y), the true label
    nll_marginal: float  # -log p_c(x), the conditional model's own marginal
    label_info: float  # log p_c(x|y) - log p_c(x) = log p_c(y|x) - log p(y)
    info_bound: float  # E[-log p(y)]: the most the label can be worth (log K for uniform labels)
    accuracy: float  # the conditional model as a classifier: argmax_y p_c(x|y) p(y) == y
    nll_uncond: float | None = None  # -log p_u(x) under the unconditional model
    gap: float | None = None  # -log p_u(x) - -log p_c(x|y) = label_info + better_model
    better_model: float | None = None  # log p_c(x) - log p_u(x)


@torch.inference_mode()
def label_nats(
    cmodel,
    ds,
    *,
    k: int = 1000,
    log_py: torch.Tensor | None = None,
    prior: str = "train",
    umodel=None,
    batch_size: int = 100,
    seed: int = 0,
) -> LabelNats:
    """The numbers of LabelNats on the labelled dataset `ds`, binarized as the conditional model was trained
    (once, with `seed`, as evaluate does); `log_py` (K,) defaults to label_prior(cmodel, prior). `umodel`: an
    unconditional VAE of the same data, input shape and binarization, for the gap."""
    from vaekit.data import expect_labels

    num = _check_conditional(cmodel)
    if not cmodel.is_vae:
        raise VaekitError("log p(x|y) needs a VAE: an autoencoder defines no density")
    expect_labels(ds, num, ds.name)
    binarize = cmodel.run_config.train.binarize
    if umodel is not None:
        if getattr(umodel, "conditional", False) or not umodel.is_vae:
            raise VaekitError("the comparison needs an unconditional VAE")
        if umodel.run_config.train.binarize != binarize or tuple(umodel.config.input_shape) != tuple(ds.shape):
            raise VaekitError("the unconditional model must see the same data: same input shape and binarization")
    log_py = label_prior(cmodel, prior) if log_py is None else log_py.double()
    g = torch.Generator().manual_seed(seeds.importance(seed))
    given, marg, unc, acc, bound = [], [], [], [], []
    for x, y in eval_batches(ds, batch_size, binarize, seed, labels=True):
        lpxy = label_log_likelihoods(cmodel, x, k, g)  # (B, K)
        given.append(lpxy.gather(1, y[:, None])[:, 0])
        marg.append(marginal_log_likelihood(lpxy, log_py))
        acc.append(((lpxy + log_py).argmax(1) == y).double())
        bound.append(-log_py[y])
        if umodel is not None:
            unc.append(log_likelihood(umodel, x, k, generator=g).double())
    lg, lm = torch.cat(given), torch.cat(marg)
    out = LabelNats(
        len(ds), k, prior, -float(lg.mean()), -float(lm.mean()), float((lg - lm).mean()),
        float(torch.cat(bound).mean()), float(torch.cat(acc).mean()),
    )  # fmt: skip
    if umodel is not None:
        lu = torch.cat(unc)
        out.nll_uncond, out.gap, out.better_model = -float(lu.mean()), float((lg - lu).mean()), float((lm - lu).mean())
    return out


def same_size(cmodel, umodel) -> bool:
    """Whether `umodel` is the unconditional twin of `cmodel`: the same model config but for the labels (and
    the same data and binarization), so the nats gap measures the label and nothing else of the setup."""
    if getattr(umodel, "conditional", False) or not umodel.is_vae or not cmodel.is_vae:
        return False
    keys = ("model", "arch", "input_shape", "latent_dim", "hidden", "channels", "activation", "likelihood")
    same = all(getattr(cmodel.config, f) == getattr(umodel.config, f) for f in keys)
    a, b = cmodel.run_config.train, umodel.run_config.train
    return same and a.data == b.data and a.binarize == b.binarize


# ------------------------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class ConditionalSettings:
    """What conditional_study measures, and on how much (the report's cost scales with n_nats * K * k)."""

    grid: int = 10  # samples per label in the grid figure
    rows: int = 5  # test digits in the restyle figure: the first of `rows` different labels
    per_label: int = 1000  # samples per label for label_accuracy
    n_restyle: int = 1000  # test digits restyled for restyle_consistency
    n_nats: int = 300  # test digits for label_nats
    k: int = 100  # importance samples per (digit, label)
    prior: str = "train"  # label_prior's kind
    seed: int = 0
    temperatures: tuple[float, ...] = (1.0, 0.8, 0.7, 0.6, 0.5)  # temperature_sweep's (1.0 gives `accuracy`)
    target: float = 0.95  # the label accuracy every label should reach (issue 16): chooses `cool`

    @classmethod
    def for_report(cls, s) -> ConditionalSettings:
        """Sized from the report's ReportSettings `s`: the full report about 15-30 s a conditional run on 2
        cores (300 digits x 10 labels x k=100 for the nats), report.QUICK a few seconds."""
        return cls(
            per_label=min(1000, max(100, s.n_gen // 2)),
            n_restyle=min(1000, s.n_eval),
            n_nats=min(300, s.n_eval),
            k=min(100, s.iw_k),
            seed=s.seed,
        )


@dataclass
class ConditionalStudy:
    grid: torch.Tensor  # (K * grid, *shape): label_grid, row c = label c
    indices: list[int]  # the test digits of the restyle figure
    labels: torch.Tensor  # (R,) their labels
    x: torch.Tensor  # (R, *shape) those digits
    restyled: torch.Tensor  # (R, K, *shape) their restyle
    accuracy: Agreement | None  # label_accuracy at temperature 1 (the prior); None without a classifier
    sweep: list[TemperaturePoint] | None  # temperature_sweep; None without a classifier
    cool: float | None  # the highest swept temperature at which every label reaches settings.target (else lowest)
    cool_grid: torch.Tensor | None  # (K * grid, *shape): label_grid at `cool`
    consistency: Consistency | None  # restyle_consistency on the first n_restyle test digits
    real: torch.Tensor | None  # (K,) the classifier's own accuracy per label on those digits, as they are
    nats: LabelNats | None  # None for an autoencoder
    settings: ConditionalSettings


def first_of_labels(y: torch.Tensor, n: int) -> list[int]:
    """Indices of the first example of each of the first n labels to appear in y (N,), in order of index."""
    seen, out = set(), []
    for i, c in enumerate(y.tolist()):
        if c not in seen:
            seen.add(c)
            out.append(i)
            if len(out) == n:
                break
    return out


def conditional_study(model, clf, ds, s: ConditionalSettings = ConditionalSettings(), umodel=None) -> ConditionalStudy:
    """Every number of a conditional model on the labelled test set `ds`: the grid, restyled digits, the
    classifier's verdicts (when `clf` is given), the nats (a VAE; with `umodel`, the gap to it)."""
    from vaekit.data import expect_labels

    k = _check_conditional(model)
    expect_labels(ds, k, ds.name)
    grid = label_grid(model, s.grid, torch.Generator().manual_seed(s.seed))
    idx = first_of_labels(ds.y, s.rows)
    x = ds.batch(torch.as_tensor(idx, dtype=torch.int64))
    acc = cons = real = sweep = cool = cool_grid = None
    if clf is not None:
        n = min(len(ds), s.per_label * k)
        sweep = temperature_sweep(model, clf, ds.batch(slice(0, n)), s.temperatures, s.per_label, s.seed)
        at_one = [p.accuracy for p in sweep if p.temperature == 1.0]
        acc = at_one[0] if at_one else label_accuracy(model, clf, s.per_label, s.seed)
        cool = coolest_needed(sweep, s.target)
        cool_grid = label_grid(model, s.grid, torch.Generator().manual_seed(s.seed), cool)
        n = min(s.n_restyle, len(ds))
        xr, yr = ds.batch(slice(0, n)), ds.y[:n]
        cons = restyle_consistency(model, clf, xr, yr)
        m = confusion(yr, clf.predict(xr).cpu(), k, clf.config.classes)
        real = m.diagonal().double() / m.sum(1).clamp(min=1).double()
    nats = None
    if model.is_vae:
        sub = ds.subset(slice(0, min(s.n_nats, len(ds))))
        nats = label_nats(model, sub, k=s.k, prior=s.prior, umodel=umodel, seed=s.seed)
    restyled = restyle(model, x, ds.y[idx])
    return ConditionalStudy(grid, idx, ds.y[idx], x, restyled, acc, sweep, cool, cool_grid, cons, real, nats, s)


def coolest_needed(sweep: list[TemperaturePoint], target: float) -> float:
    """The highest temperature of the sweep at which every label's accuracy reaches `target`; the lowest
    temperature swept when none does."""
    ok = [p.temperature for p in sweep if float(p.accuracy.per_label.min()) >= target]
    return max(ok) if ok else min(p.temperature for p in sweep)
