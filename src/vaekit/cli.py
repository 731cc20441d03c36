"""The `vaekit` command: parse, call the library, print. Bad input -> `error: ...` on stderr, exit 2."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from vaekit import cli_args as arg
from vaekit.errors import VaekitError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the usage block too)
        raise VaekitError(f"{self.prog}: {message}")


# Training flags: (flag, type, help). All default to None so we can tell "given" from "not given".
TRAIN_FLAGS = [
    ("--data", str, "mnist, fashion-mnist, or a .npy/.npz file, image folder or IDX file (default mnist)"),
    ("--model", str, "vae or ae (default vae)"),
    ("--arch", str, "mlp or conv (default mlp)"),
    (
        "--latent-dim",
        arg.latent_dim,
        "latent size D (default 20), or sizes bottom to top for stochastic layers: 100,50",
    ),
    ("--hidden", arg.int_list, "hidden widths, e.g. 400 or 512,256 (default 400)"),
    ("--channels", arg.int_list, "conv channels, e.g. 32,64 (default 32,64)"),
    ("--activation", str, "relu, tanh, elu, gelu, silu, softplus, leaky_relu (default relu)"),
    ("--likelihood", str, "bernoulli, gaussian or cbernoulli (default bernoulli)"),
    ("--sigma", float, "gaussian: fixed (or initial) pixel sigma (default 0.1)"),
    ("--learn-sigma", str, "gaussian: none, global or pixel (default none)"),
    ("--binarize", str, "dynamic, static, none or auto (default auto: dynamic for bernoulli)"),
    ("--val-fraction", float, "fraction of the training data held out for validation (default 0.05)"),
    ("--epochs", int, "training epochs (default 10)"),
    ("--batch-size", int, "examples per step, across all processes (default 128)"),
    ("--lr", float, "Adam learning rate (default 1e-3)"),
    ("--schedule", str, "learning-rate schedule: constant, cosine or step (default constant)"),
    ("--step-every", int, "step schedule: epochs between halvings (default 30)"),
    ("--weight-decay", float, "Adam weight decay (default 0)"),
    ("--clip", float, "max gradient norm, 0 = off (default 0)"),
    ("--beta", float, "KL weight, beta-VAE (default 1.0)"),
    ("--kl-warmup", float, "epochs of linear KL warm-up from 0 to beta (default 0)"),
    ("--free-bits", float, "free bits: nats per latent dimension (default 0)"),
    ("--iw-k", int, "importance samples; >1 trains on the IWAE bound (default 1)"),
    ("--seed", int, "random seed (default 0)"),
    ("--device", str, "auto, cpu or cuda (default auto)"),
    ("--threads", int, "torch CPU threads, 0 = torch's default"),
    (
        "--checkpoint-every",
        arg.checkpoint_every,
        "mid-epoch checkpoints every N steps or a time (30s, 5m, 1h); 0 = off (default 500)",
    ),
    ("--patience", int, "early stopping: epochs without validation improvement, 0 = off"),
    ("--max-bad-steps", int, "consecutive non-finite steps before stopping (default 20)"),
    ("--prior", str, "p(z): standard (N(0, I)), vamp (VampPrior) or mog (mixture of Gaussians) (default standard)"),
    ("--prior-components", int, "vamp: pseudo-inputs K; mog: Gaussians K (default 500)"),
    ("--estimator", str, "the IWAE bound's gradient: standard or dreg (doubly reparameterized; needs --iw-k > 1)"),
    (
        "--time-budget",
        str,
        "train for this long (90s, 60m, 1.5h) instead of --epochs; a cosine schedule spans it (default: off)",
    ),
]
# Training switches: (flag, help); store_true with default None, for the same reason.
SPEED = [  # --amp / --amp on|off|auto / --no-amp (cli_args.add_on_off_auto); default auto (vaekit.speed)
    ("--amp", "bf16 mixed precision (CUDA, or a CPU with AVX512-BF16/AMX); default auto: where native and faster"),
    ("--compile", "torch.compile the whole training step (a one-off ~10-30 s); default auto: for long runs"),
]
SWITCHES = [
    ("--quiet", "no progress output"),
    ("--conditional", "a conditional model of the data's labels (Sohn et al. 2015): q(z|x,y), p(x|z,y)"),
]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vaekit", description="Variational autoencoders: train, evaluate, sample, explore.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add_arguments in (_data_args, _train_args, _eval_args, _picture_args, _file_args, _shell_args):
        add_arguments(sub)
    return p


def _data_args(sub) -> None:
    d = sub.add_parser("data", help="datasets: fetch and verify")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    dsub.required = True
    f = dsub.add_parser("fetch", help="download, verify and cache a dataset")
    f.add_argument("name", help="mnist or fashion-mnist")


def _train_args(sub) -> None:
    t = sub.add_parser("train", help="train a VAE or an autoencoder into a run folder")
    for flag, typ, hlp in TRAIN_FLAGS:
        t.add_argument(flag, type=typ, default=None, help=hlp)
    t.add_argument("--config", type=Path, help="YAML or JSON file of options; flags given here override it")
    t.add_argument("--out", type=Path, required=True, help="the run folder, e.g. runs/vae")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    for flag, hlp in SWITCHES:
        t.add_argument(flag, action="store_true", default=None, help=hlp)
    for flag, hlp in SPEED:
        arg.add_on_off_auto(t, flag, hlp)


def _eval_args(sub) -> None:
    e = sub.add_parser("eval", help="ELBO, reconstruction, KL and importance-sampled NLL, in nats")
    e.add_argument("run", type=Path)
    e.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="val: the validation split the run held out"
    )
    e.add_argument("--data", help="evaluate on other data (a dataset name or a file) instead of the run's")
    e.add_argument(
        "--iw-samples",
        type=arg.int_in(0, arg.MAX_IW_SAMPLES),
        default=5000,
        help="importance samples for the NLL; 0 = skip",
    )
    e.add_argument("--limit", type=arg.positive_int, help="only the first N examples")
    e.add_argument("--batch-size", type=arg.positive_int, default=100)
    e.add_argument("--seed", type=arg.seed, default=0)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument(
        "--amp",
        action="store_true",
        help="the NLL's decoder products in bf16 (native bf16 only; ~2.5x faster on the CPU, shifts the NLL by "
        "hundredths of a nat: prints the shift on the first batch); default float32",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")


def _picture_args(sub) -> None:
    s = sub.add_parser("sample", help="decode draws from the prior into an image grid")
    s.add_argument("run", type=Path)
    s.add_argument(
        "-n",
        type=arg.int_in(1, arg.MAX_IMAGES),
        help="images (default 64); with --label all, or a conditional model without --label: images per label, a row "
        "each (default 10)",
    )
    s.add_argument(
        "-o", "--output", type=arg.array_or_image_path, help=f"PNG path (default RUN/figures/samples.png){arg.NPY}"
    )
    s.add_argument("--seed", type=arg.seed, default=0)
    s.add_argument(
        "--label",
        type=arg.label,
        help="a conditional model: decode every draw with this label, or 'all': one row per label (the default)",
    )
    s.add_argument(
        "--temperature",
        type=arg.temperature,
        default=1.0,
        help="draw z from the prior with its spread times T (default 1: the prior; 0.5-0.7: fewer odd digits, "
        "less variety)",
    )

    rs = sub.add_parser("restyle", help="a conditional model: test digits' codes decoded under every label")
    rs.add_argument("run", type=Path)
    rs.add_argument("--index", type=int, nargs="+", required=True, help="test examples, one row each")
    rs.add_argument("--data", help="examples with labels from other data (a dataset name or a file)")
    rs.add_argument("--split", default="test", choices=["train", "test"])
    rs.add_argument(
        "-o",
        "--output",
        type=arg.array_or_image_path,
        help="PNG path (default RUN/figures/restyle.png): per row the example, then its code decoded with labels "
        "0..K-1; .npy: the decodes alone, float32 (rows * K, C, H, W), row r's label c at r * K + c",
    )

    r = sub.add_parser("reconstruct", help="test digits above their reconstructions")
    r.add_argument("run", type=Path)
    r.add_argument("-n", type=arg.int_in(1, arg.MAX_IMAGES), default=16)
    r.add_argument("-o", "--output", type=arg.image_path, help="PNG path (default RUN/figures/reconstructions.png)")
    r.add_argument("--split", default="test", choices=["train", "test"])

    i = sub.add_parser("interpolate", help="decode a path between two test examples")
    i.add_argument("run", type=Path)
    i.add_argument("--from", dest="src", type=int, required=True, help="index of the first test example")
    i.add_argument("--to", dest="dst", type=int, required=True, help="index of the second test example")
    i.add_argument("--steps", type=arg.int_in(1, arg.MAX_IMAGES), default=10)
    i.add_argument("--spherical", action="store_true", help="slerp instead of a straight line")
    i.add_argument("-o", "--output", type=arg.image_path, help="PNG path (default RUN/figures/interpolation.png)")


def _file_args(sub) -> None:
    en = sub.add_parser("encode", help="posterior means E[z|x] of a dataset, as .npy")
    en.add_argument("run", type=Path)
    en.add_argument("--data", required=True, help="a dataset name (its --split) or a file/folder")
    en.add_argument("--split", default="test", choices=["train", "test"])
    en.add_argument("-o", "--output", type=arg.out_file, required=True, help="codes.npy, shape (N, D)")

    sc = sub.add_parser("score", help="per-example anomaly scores (and outlier flags), as CSV")
    sc.add_argument("run", type=Path)
    sc.add_argument("--data", required=True, help="a dataset name (its --split) or a file/folder")
    sc.add_argument("--split", default="test", choices=["train", "test"])
    sc.add_argument(
        "--iw-samples",
        type=arg.int_in(0, arg.MAX_IW_SAMPLES),
        default=0,
        help="importance samples for an nll column (-log p(x), a VAE only; slow); 0 = no nll column",
    )
    sc.add_argument("--limit", type=arg.positive_int, help="only the first N examples of --data")
    sc.add_argument(
        "--fpr", type=arg.fpr, help="calibrate a threshold at this false-positive rate, saved as RUN/threshold.json"
    )
    sc.add_argument(
        "--calibrate-on",
        help="held-out inliers to calibrate the threshold on, instead of the run's validation split: a dataset "
        "name (its test split) or a file/folder; without --fpr, at FPR 0.05",
    )
    sc.add_argument("-o", "--output", type=arg.out_file, required=True, help="scores.csv")


def _shell_args(sub) -> None:
    rp = sub.add_parser("report", help="the HTML report for one or more runs")
    rp.add_argument("runs", type=Path, nargs="+")
    rp.add_argument("-o", "--output", type=Path, default=Path("report.html"))

    dm = sub.add_parser("demo", help="train AE, VAE, 2-D VAE and a classifier on MNIST; write the report")
    dm.add_argument("--out", type=Path, default=Path("runs/demo"))
    dm.add_argument("--quick", action="store_true", help="a small, fast version (about 2 minutes)")

    sv = sub.add_parser("serve", help="the latent explorer in the browser")
    sv.add_argument("runs", type=Path, nargs="+")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument(
        "--max-connections",
        type=arg.int_in(1, 65536),
        help="open connections; one past them has 1 s to send a request, then closes the connection waiting "
        "longest for one (default 256)",
    )
    sv.add_argument(
        "--read-timeout",
        type=arg.seconds,
        help="seconds a client has to send a request's headers, then as many for its body (default 10)",
    )


# ------------------------------------------------------------------------------------------ commands


def cmd_data(args) -> int:
    from vaekit.data import fetch

    path = fetch(args.name)
    print(f"{args.name}: verified in {path}")
    return 0


def cmd_train(args) -> int:
    from vaekit.options import Options
    from vaekit.train import dist_info, train

    names = [flag[2:].replace("-", "_") for flag, *_ in TRAIN_FLAGS + SWITCHES + SPEED]
    options = Options.gather(args.config, {n: getattr(args, n) for n in names if getattr(args, n) is not None})
    run_config = options.run_config()
    with options.naming_sources():  # `run.yaml: --epochs must be ...` when `epochs: -3` came from the file
        run = train(run_config, args.out, resume=args.resume, overwrite=args.overwrite, given=options.given)
    last = run.metrics[-1] if run.metrics else {}
    summary = {k: round(v, 3) for k, v in last.items() if isinstance(v, float)}
    epochs = last.get("epoch", 0)
    if "partial_epoch" in last:  # the time budget ended the last epoch part way: the model as it was then
        epochs = f"{epochs - 1 + last['partial_epoch']:g}"
    if dist_info()[0] == 0:  # under torchrun, rank 0 speaks for all
        print(f"run: {args.out}  ({run.stopped}, {epochs} epochs)  {json.dumps(summary)}")
    return 0


def cmd_eval(args) -> int:
    import vaekit
    from vaekit.operations import evaluate_run

    res = evaluate_run(
        args.run,
        data=args.data,
        split=args.split,
        limit=args.limit,
        iw_samples=args.iw_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
    )
    if args.json:
        print(json.dumps(res))
        return 0
    given = ", conditional on the labels" if res["conditional"] else ""
    print(f"{args.run} on {res['split']} ({res['n']} examples), nats per example{given}:")
    print(f"  ELBO   {res['elbo']:10.3f}   (recon {res['recon']:.3f}, KL {res['kl']:.3f})")
    if res["nll"] is not None:  # a VAE: kl_per_dim has one entry per latent dimension
        nll = "-log p(x|y)" if res["conditional"] else "-log p(x)"
        print(f"  NLL    {res['nll']:10.3f}   ({nll}, importance-sampled, k={res['iw_samples']})")
        sizes = vaekit.io.load_config(args.run).model.latent_sizes  # (a prior's kl_per_dim may be None)
        layers = res.get("active_units_per_layer")
        per = f" ({'/'.join(map(str, layers))} of {','.join(map(str, sizes))}, per layer)" if layers else ""
        print(f"  active units {res['active_units']}/{sum(sizes)}{per}")
        if res["amp"]:
            print(f"  --amp: bf16 decoder products; NLL minus float32's on the first batch {res['amp_nll_shift']:+.4f}")
    print(f"  {res['seconds']:.1f} s")
    return 0


def cmd_sample(args) -> int:
    import vaekit
    from vaekit.operations import save_samples

    if args.label is None and vaekit.io.load_config(args.run).model.num_classes:
        print("a conditional model: one row per label (--label all); --label C for label C alone", file=sys.stderr)
    print(save_samples(args.run, args.output, n=args.n, seed=args.seed, label=args.label, temperature=args.temperature))
    return 0


def cmd_restyle(args) -> int:
    from vaekit.operations import save_restyle

    print(save_restyle(args.run, args.index, args.output, data=args.data, split=args.split))
    return 0


def cmd_reconstruct(args) -> int:
    from vaekit.operations import save_reconstructions

    print(save_reconstructions(args.run, args.output, n=args.n, split=args.split))
    return 0


def cmd_interpolate(args) -> int:
    from vaekit.operations import save_interpolation

    print(save_interpolation(args.run, args.src, args.dst, args.output, steps=args.steps, spherical=args.spherical))
    return 0


def cmd_encode(args) -> int:
    from vaekit.operations import save_codes

    mu = save_codes(args.run, args.data, args.output, split=args.split)
    print(f"{args.output}: {tuple(mu.shape)} posterior means")
    return 0


def cmd_score(args) -> int:
    from vaekit.anomaly import THRESHOLD_FILE
    from vaekit.operations import save_scores

    res = save_scores(
        args.run,
        args.data,
        args.output,
        split=args.split,
        iw_samples=args.iw_samples,
        limit=args.limit,
        fpr=args.fpr,
        calibrate_on=args.calibrate_on,
    )
    cols, t = res["columns"], res["threshold"]
    n = len(cols["index"])
    line = (
        f"{args.output}: {n} rows (score = -log tail p of -ELBO - complexity and orientation against "
        f"{res['calibrated_on']}, n={res['n_calibration']}; higher = less like the training data)"
    )
    if t is None:
        line += "; no threshold (--fpr 0.05 calibrates one)"
    else:
        saved = "saved to" if res["calibrated"] else "from"
        line += (
            f"; {sum(cols['is_outlier'])} flagged as outliers (threshold {t.value:.2f} nats, FPR {t.fpr:g} on "
            f"{t.calibrated_on}, n={t.n}; {saved} {args.run / THRESHOLD_FILE})"
        )
    print(line)
    return 0


def cmd_report(args) -> int:
    from vaekit.report import write_report

    print(write_report(args.runs, args.output))
    return 0


def cmd_demo(args) -> int:
    from vaekit.demo import run_demo

    print(run_demo(args.out, quick=args.quick))
    return 0


def cmd_serve(args) -> int:
    from vaekit.app import serve

    return serve(args.runs, args.host, args.port, args.max_connections, args.read_timeout)


COMMANDS = {
    "data": cmd_data,
    "train": cmd_train,
    "eval": cmd_eval,
    "sample": cmd_sample,
    "restyle": cmd_restyle,
    "reconstruct": cmd_reconstruct,
    "interpolate": cmd_interpolate,
    "encode": cmd_encode,
    "score": cmd_score,
    "report": cmd_report,
    "demo": cmd_demo,
    "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    from vaekit.train import Interrupted

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except VaekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:
        return 0
    except OSError as e:  # a full disk, a read-only folder, a path through a file: one line, not a traceback
        print(f"error: {e.filename or ''}{': ' if e.filename else ''}{(e.strerror or str(e)).lower()}", file=sys.stderr)
        return 2
