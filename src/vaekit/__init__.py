"""vaekit: variational autoencoders as they are taught, fast on a CPU, measured honestly.

import vaekit
ds = vaekit.data.load("mnist", split="train")
model = vaekit.load("runs/demo/vae")
model.encode(x); model.decode(z); model.sample(64)
vaekit.evaluate.log_likelihood(model, x, k=5000)
vaekit.operations.evaluate_run("runs/demo/vae")   # what `vaekit eval` prints, as a dict
vaekit.anomaly.Detector(model).fit(x_inliers, fpr=0.05).predict(x)   # outliers
vaekit.show(model.sample(64))   # an image grid that draws itself in Jupyter (so does `model`, as a table)
"""

from vaekit import anomaly, data, evaluate, objectives, operations
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.display import Picture, show
from vaekit.errors import VaekitError
from vaekit.io import load, save
from vaekit.models import VAE, Autoencoder, build_model
from vaekit.train import Run, fit

__version__ = "0.3.0"
__all__ = [
    "anomaly",
    "data",
    "evaluate",
    "objectives",
    "operations",
    "load",
    "save",
    "fit",
    "Run",
    "build_model",
    "VAE",
    "Autoencoder",
    "ModelConfig",
    "TrainConfig",
    "RunConfig",
    "VaekitError",
    "show",
    "Picture",
]
