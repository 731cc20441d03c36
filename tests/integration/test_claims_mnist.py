"""The claims' known answers with a real classifier trained on real MNIST (slow, through mnist_train): a decoder
that draws one real digit everywhere leaves no holes and keeps its label at every radius; a decoder drawing
noise is all holes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaekit.claims_latent import fit_typicality, hole_map, neighbourhood_agreement
from vaekit.classifier import Classifier, ClassifierConfig, fit_classifier
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.models import build_model


@pytest.fixture(scope="module")
def classifier(mnist_train):
    cfg = ClassifierConfig(epochs=1, limit=12000)
    torch.manual_seed(0)
    clf = Classifier(cfg)
    fit_classifier(clf, mnist_train.subset(slice(0, cfg.limit)), cfg)
    return clf.eval()


class Fixed(nn.Module):
    """Decoder logits that make the Bernoulli mean `image` (1, 28, 28), whatever z is."""

    def __init__(self, image):
        super().__init__()
        self.logits = torch.logit(image.clamp(1e-4, 1 - 1e-4))

    def forward(self, z):
        return self.logits.expand(len(z), *self.logits.shape)


class Noise(nn.Module):
    def forward(self, z):
        return 4 * torch.randn(len(z), 1, 28, 28, generator=torch.Generator().manual_seed(len(z)))


def model_with(decoder, model="ae", latent_dim=2):
    cfg = ModelConfig(model=model, latent_dim=latent_dim, hidden=(32,))
    m = build_model(cfg).eval()
    m.run_config = RunConfig(cfg, TrainConfig())
    m.decoder = decoder
    return m


def test_known_answers_with_the_real_classifier(classifier, mnist_train):
    x, y = mnist_train.batch(slice(20000, 20300)), mnist_train.y[20000:20300]
    typical = fit_typicality(classifier, mnist_train.batch(slice(30000, 34000)), mnist_train.y[30000:34000])
    p = classifier.predict_proba(x)
    # a digit the classifier is sure of and whose features are typical (the surest ones are not: large logits
    # come with large features, far from every class mean)
    i = int(torch.where(p.max(-1).values > 0.95, typical.score(x), torch.inf).argmin())
    digit, label = x[i], int(p[i].argmax())
    fixed = model_with(Fixed(digit))
    codes = torch.randn(500, 2) * 3
    h = hole_map(fixed, classifier, codes, grid=15)
    assert h.hole_fraction == 0.0 and (h.label == label).all()
    vae = model_with(Fixed(digit), "vae", 20)
    nb = neighbourhood_agreement(vae, classifier, x[:50], torch.full((50,), label), [0, 0.5, 1, 2, 5], draws=2)
    assert nb.agreement == [1.0] * 5 and min(nb.confidence) > 0.9
    assert hole_map(fixed, classifier, codes, grid=15, typical=typical).hole_fraction == 0.0
    h = hole_map(model_with(Noise()), classifier, codes, grid=15, typical=typical)
    assert h.hole_fraction > 0.7, h.hole_fraction  # confidence alone finds 0.1-0.25: the MLP is sure of noise
    assert float((classifier.predict(x) == y).float().mean()) > 0.9  # the classifier is a real one
