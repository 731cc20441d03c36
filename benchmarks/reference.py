"""The reference the speed benchmarks compare against: the PyTorch examples VAE, without torchvision.

A re-implementation of pytorch/examples `vae/main.py`
(https://github.com/pytorch/examples/blob/main/vae/main.py, as of commit 77f55b9, August 2025): the
784-400-20-400-784 MLP (ReLU, sigmoid output), the summed BCE on grey pixels + the analytic KL, Adam at
lr 1e-3, batch 128, a shuffled training DataLoader and an unshuffled test one. Its data pipeline is
torchvision's `datasets.MNIST` + `transforms.ToTensor` (torchvision/datasets/mnist.py and
torchvision/transforms/functional.py:to_tensor): each uint8 image becomes a PIL image, then a float
tensor in [0, 1], one example per `__getitem__`, batched by the default collate. That per-example cost
is part of what the benchmarks time, so it is kept as it is.

Left out: the example's progress prints and PNG files, hence also its 64-sample draw after each
epoch (which would advance the RNG). With the same --seed it prints the same losses, to the last digit, as the
baseline script the benchmarks used to run from outside the repository (the check is recorded in
benchmarks/RESULTS.md). It runs on the CPU unless --device cuda, where it does what the example does on a GPU:
the model and each batch on the device, DataLoaders with one worker and pinned memory.

    python benchmarks/reference.py --idx-dir DIR [--epochs 10] [--batch-size 128] [--seed 1] [--threads 0]
                                   [--device cpu|cuda]

DIR holds the uncompressed MNIST IDX files (train-images-idx3-ubyte, t10k-labels-idx1-ubyte, ...).
Prints one JSON line per epoch: {"epoch", "train_seconds", "test_seconds", "train_loss", "test_loss"};
seconds of wall clock, losses in nats per example (train: the sum over the epoch's steps, each taken
before its update, over the number of examples, as the example prints it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from torch import nn, optim
from torch.nn import functional as F

from vaekit.data.idx import read_idx
from vaekit.errors import VaekitError


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor for an 8-bit PIL image: (C, H, W) float32 in [0, 1]."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
    return img.permute((2, 0, 1)).contiguous().to(dtype=torch.get_default_dtype()).div(255)


class MNIST(torch.utils.data.Dataset):
    """torchvision's MNIST over IDX files: uint8 tensors held whole, one PIL image made per example."""

    def __init__(self, idx_dir: Path, train: bool):
        prefix = "train" if train else "t10k"
        self.data = torch.from_numpy(read_idx(idx_dir / f"{prefix}-images-idx3-ubyte"))  # (N, 28, 28) uint8
        self.targets = torch.from_numpy(read_idx(idx_dir / f"{prefix}-labels-idx1-ubyte")).long()  # (N,)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index], int(self.targets[index])
        return to_tensor(Image.fromarray(img.numpy(), mode="L")), target  # (1, 28, 28), label


class VAE(nn.Module):
    """The example's model; the layers are made in its order, so a seed gives the same weights."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)  # mu, logvar: (B, 20)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))  # (B, 784) Bernoulli means

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """Summed over pixels and the batch, in nats: BCE + KL(q(z|x) || N(0, I))."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    # KL of a diagonal Gaussian from the standard normal: Kingma & Welling (2014), Appendix B
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def train(model: VAE, optimizer: optim.Optimizer, loader: torch.utils.data.DataLoader, device="cpu") -> float:
    """One epoch; the mean loss per example, in nats."""
    model.train()
    train_loss = 0.0
    for data, _ in loader:
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss / len(loader.dataset)


def test(model: VAE, loader: torch.utils.data.DataLoader, device="cpu") -> float:
    """The mean loss per test example, in nats (one posterior sample each)."""
    model.eval()
    test_loss = 0.0
    with torch.no_grad():
        for data, _ in loader:
            data = data.to(device)
            recon_batch, mu, logvar = model(data)
            test_loss += loss_function(recon_batch, data, mu, logvar).item()
    return test_loss / len(loader.dataset)


def main() -> None:
    ap = argparse.ArgumentParser(description="The PyTorch examples VAE on MNIST IDX files (benchmark reference).")
    ap.add_argument("--idx-dir", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    ap.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="as the example's --no-accel (default cpu)"
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.exit(2, "error: --device cuda: torch.cuda.is_available() is False on this machine\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        train_set, test_set = MNIST(args.idx_dir, train=True), MNIST(args.idx_dir, train=False)
    except VaekitError as e:
        ap.exit(2, f"error: {e}\n")
    kwargs = {"num_workers": 1, "pin_memory": True} if args.device == "cuda" else {}  # the example's, on a GPU
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, **kwargs)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=args.batch_size, shuffle=False, **kwargs)
    model = VAE().to(args.device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        train_loss = train(model, optimizer, train_loader, args.device)
        t1 = time.perf_counter()
        test_loss = test(model, test_loader, args.device)
        t2 = time.perf_counter()
        row = {
            "epoch": epoch,
            "train_seconds": round(t1 - t0, 3),
            "test_seconds": round(t2 - t1, 3),
            "train_loss": train_loss,
            "test_loss": test_loss,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
