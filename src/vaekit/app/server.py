"""The latent explorer's server: a FastAPI app over models loaded at start, and the page in static/.

    GET  /api/models       the loaded models (refer to one by its index or name, never by a path)
    GET  /api/latents      the map: test-set posterior means on a plane (PCA or two dims), with labels (and
                           a 2-D model's confidence background when a classifier is loaded)
    POST /api/decode       z -> the decoded mean, as a PNG
    POST /api/encode       a drawing or a test example -> mu, sigma, reconstruction, ELBO, anomaly score
    POST /api/interpolate  two ends (test example, drawing or z) -> a strip of decoded steps
    POST /api/sample       n prior draws -> a grid

A conditional model takes a `label` in every request (its map: the test digits encoded with their own
labels); an unconditional one refuses it. Images travel as PNG data URLs (greyscale for one channel); pixels
sent in are floats in [0, 1]. Every input is validated (latent length, finite values, exact image size,
capped counts, labels) and answered with a 4xx and a message. schema.py holds the request and response
models, guard.py the middleware that caps request bodies, requires JSON and checks the Host header,
entries.py the models loaded at start (each with its map, its anomaly detector and its confidence map).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from vaekit.app.entries import Entry, load_entries
from vaekit.app.guard import Guard
from vaekit.app.schema import (
    ERRORS,
    MAP_POINTS,
    MAX_BODY,
    MAX_LATENT,
    ConfidenceMap,
    DecodeRequest,
    DecodeResponse,
    EncodeRequest,
    EncodeResponse,
    End,
    InterpolateRequest,
    InterpolateResponse,
    LatentsResponse,
    Limits,
    ModelInfo,
    ModelsResponse,
    SampleRequest,
    SampleResponse,
    Source,
)
from vaekit.figures import grid
from vaekit.latent import interpolate
from vaekit.objectives import elbo
from vaekit.priors import describe

STATIC = Path(__file__).parent / "static"
__all__ = ["Entry", "Explorer", "create_app", "load_entries"]


# ------------------------------------------------------------------------------------------ helpers


def png(images: torch.Tensor, nrow: int | None = None, pad: int = 0) -> str:
    """Images (N, *shape) in [0, 1] -> one tiled PNG as a data URL (figures.grid does the tiling)."""
    img = grid(torch.nan_to_num(images.float(), nan=0.0, posinf=1.0, neginf=0.0), nrow, pad=pad)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def invalid(loc: tuple, msg: str):
    """A 422 shaped like FastAPI's own validation errors, for checks the schema cannot state
    (they depend on the model: latent length, image size, index range)."""
    raise RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


def _floats(t: torch.Tensor, digits: int = 5) -> list:
    return torch.round(t.double(), decimals=digits).tolist()


def label_of(e: Entry, label: int | None, loc: tuple, default: int | None = None) -> int | None:
    """The label a request conditions a model on, checked: a conditional model's in 0..K-1 (`default` when
    none was sent; a 422 when there is none), none for an unconditional model (a label sent to it: 422)."""
    k = e.num_classes
    if not k:
        if label is not None:
            invalid(loc, f"model {e.name!r} is not conditional: it takes no label (train with --conditional)")
        return None
    label = default if label is None else label
    if label is None:
        invalid(loc, f"model {e.name!r} is conditional ({k} classes): give a label 0..{k - 1}")
    if label >= k:
        invalid(loc, f"model {e.name!r} has {k} classes: label must be in 0..{k - 1}, got {label}")
    return label


def confidence_map(e: Entry, label: int | None, dims: list[int]) -> ConfidenceMap | None:
    """The entry's confidence map (given `label`) on the plane of latent dims (x, y) of a 2-D model; None
    when it has none. dims (1, 0) shows z2 across: the grid transposed, each axis still in map order."""
    if e.holes is None or sorted(dims) != [0, 1]:
        return None
    h = e.holes[label or 0]
    conf, hole = h.confidence, (h.confidence < h.threshold) | h.atypical  # (n, n), row 0 at the top
    xs, ys = h.xs, h.ys
    if dims == [1, 0]:  # x = z2 increasing, y = z1 decreasing: N[a, b] = C[n-1-b, n-1-a]
        conf, hole, xs, ys = conf[::-1, ::-1].T, hole[::-1, ::-1].T, ys[::-1], xs[::-1]
    return ConfidenceMap(
        label=label,
        size=len(xs),
        x=np.round(np.asarray(xs, dtype=float), 5).tolist(),
        y=np.round(np.asarray(ys, dtype=float), 5).tolist(),
        confidence=np.round(np.asarray(conf, dtype=float), 4).tolist(),
        hole=np.asarray(hole, dtype=bool).tolist(),
        threshold=h.threshold,
        hole_fraction=h.hole_fraction,
    )


class Explorer:
    """The loaded models and what the endpoints do with them."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.by_name = {e.name: e for e in entries}

    def get(self, ref: int | str) -> Entry:
        if isinstance(ref, int) and 0 <= ref < len(self.entries):
            return self.entries[ref]
        if isinstance(ref, str):
            if ref in self.by_name:
                return self.by_name[ref]
            if ref.isascii() and ref.isdigit() and int(ref) < len(self.entries):
                return self.entries[int(ref)]
        shown = ref if isinstance(ref, int) else repr(ref[:80])
        raise HTTPException(
            404, f"unknown model {shown}: use an index 0..{len(self.entries) - 1} or a name from /api/models"
        )

    def info(self) -> ModelsResponse:
        return ModelsResponse(
            limits=Limits(),
            classifier=next((e.classifier for e in self.entries), None),
            models=[
                ModelInfo(
                    index=i,
                    name=e.name,
                    kind="vae" if e.model.is_vae else "ae",
                    latent_dim=e.latent_dim,
                    latent_sizes=list(e.model.latent_sizes),
                    input_shape=list(e.shape),
                    arch=e.model.config.arch,
                    likelihood=e.model.config.likelihood,
                    prior=describe(e.model.prior) if e.model.is_vae else None,
                    data=e.data,
                    split=e.split,
                    points=len(e.x),
                    has_labels=e.labels is not None,
                    num_classes=e.num_classes,
                    confidence_map=e.holes is not None,
                    elbo_mean=e.elbo_mean,
                    recon_mean=e.recon_mean,
                    threshold=e.threshold_info(),
                )
                for i, e in enumerate(self.entries)
            ],
        )

    # -- inputs -> tensors, checked against the model

    def z_of(self, e: Entry, z: list[float], loc: tuple) -> torch.Tensor:
        if len(z) != e.latent_dim:
            invalid(loc, f"model {e.name!r} has {e.latent_words}: z needs {e.latent_dim} values, got {len(z)}")
        return torch.tensor(z, dtype=torch.float32)

    def x_of(self, e: Entry, src: Source | End, loc: tuple) -> torch.Tensor:
        """The image a source names, (1, *shape)."""
        if src.index is not None:
            if src.index >= len(e.x):
                invalid(
                    loc + ("index",),
                    f"model {e.name!r} has {len(e.x)} test examples on its map: "
                    f"index must be below {len(e.x)}, got {src.index}",
                )
            return e.x[src.index : src.index + 1]
        need = math.prod(e.shape)
        if len(src.pixels) != need:
            invalid(
                loc + ("pixels",),
                f"model {e.name!r} takes images of shape {list(e.shape)}: "
                f"pixels needs {need} values, got {len(src.pixels)}",
            )
        return torch.tensor(src.pixels, dtype=torch.float32).view(1, *e.shape)

    # -- the endpoints' work, under inference_mode

    @torch.inference_mode()
    def decode(self, req: DecodeRequest) -> DecodeResponse:
        e = self.get(req.model)
        z = self.z_of(e, req.z, ("body", "z"))
        label = label_of(e, req.label, ("body", "label"))
        return DecodeResponse(model=e.name, label=label, image=png(e.decode(z[None], label).mean))

    @torch.inference_mode()
    def encode(self, req: EncodeRequest) -> EncodeResponse:
        e = self.get(req.model)
        x = self.x_of(e, req, ("body",))  # (1, *shape)
        label = label_of(e, req.label, ("body", "label"), self.own_label(e, req))
        m = e.bound(label)
        q = m.encode(x)
        mu, sigma = e.model.top(q.mean)[0], e.model.top(q.stddev)[0]  # a hierarchy: its top layer's
        if e.model.is_vae:
            t = elbo(m, x, eps=e.eps)  # terms (K, 1), KL (1,)
            scores = dict(elbo=t.elbo.mean().item(), recon=t.recon.mean().item(), kl=t.kl.mean().item())
        else:
            scores = dict(elbo=None, recon=m.decode(q.mean).log_prob(x).item(), kl=None)
        k = e.num_classes  # a conditional model: the same z under every label, one strip
        restyled = png(e.model.decode(mu.expand(k, -1), torch.arange(k)).mean, k, pad=2) if k else None
        return EncodeResponse(
            model=e.name,
            mu=_floats(mu),
            sigma=_floats(sigma),
            image=png(x),
            label=label,
            reconstruction=png(m.decode(q.mean).mean),  # every layer's mean, as `vaekit reconstruct`
            restyled=restyled,
            anomaly=e.anomaly(x, label),
            **scores,
        )

    @staticmethod
    def own_label(e: Entry, src: Source | End) -> int | None:
        """A test example's own label (a conditional model encodes it so on the map); None for pixels or z."""
        ok = src.index is not None and e.labels is not None and src.index < len(e.labels)
        return int(e.labels[src.index]) if ok else None

    @torch.inference_mode()
    def sample(self, req: SampleRequest) -> SampleResponse:
        e = self.get(req.model)
        label = label_of(e, req.label, ("body", "label"))
        x = e.bound(label).sample(req.n, torch.Generator().manual_seed(req.seed))
        nrow = req.nrow or math.ceil(math.sqrt(req.n))
        return SampleResponse(model=e.name, label=label, n=req.n, nrow=nrow, image=png(x, nrow, pad=2))

    @torch.inference_mode()
    def interpolate(self, req: InterpolateRequest) -> InterpolateResponse:
        e = self.get(req.model)
        label = label_of(e, req.label, ("body", "label"))
        ends = []
        for name, end in (("start", req.start), ("end", req.end)):
            loc = ("body", name)
            if end.z is not None:
                ends.append(self.z_of(e, end.z, loc + ("z",)))
            else:
                x = self.x_of(e, end, loc)
                own = self.own_label(e, end) if label is not None else None
                ends.append(e.model.top(e.bound(label if own is None else own).encode(x).mean)[0])
        z = interpolate(ends[0], ends[1], req.steps, req.spherical)  # (steps, D)
        frames = e.decode(z, label).mean
        return InterpolateResponse(
            model=e.name,
            label=label,
            steps=req.steps,
            spherical=req.spherical,
            image=png(frames, req.steps, pad=2),
            z=_floats(z),
        )

    @torch.inference_mode()
    def latents(self, ref: str, n: int, plane: str, x: int, y: int, label: int | None = None) -> LatentsResponse:
        e = self.get(ref)
        label = label_of(e, label, ("query", "label"), 0)
        d = e.latent_dim
        if plane == "auto":
            plane = "pca" if d > 2 and e.pca is not None else "dims"
        if plane == "pca":
            if e.pca is None:
                invalid(
                    ("query", "plane"),
                    f"model {e.name!r} has no PCA plane "
                    f"({'a 1-D latent' if d < 2 else 'no map points'}): use plane=dims",
                )
            origin, basis, share = e.pca
            dims = None
            axes = [f"PC 1 ({100 * share[0]:.0f}% of variance)", f"PC 2 ({100 * share[1]:.0f}%)"]
        else:
            for q, v in (("x", x), ("y", y)):
                if v >= d and not (q == "y" and d == 1):
                    invalid(("query", q), f"model {e.name!r} has {e.latent_words}: {q} must be below {d}, got {v}")
            if d > 1 and x == y:
                invalid(("query", "y"), f"x and y must be two different dimensions, both are {x}")
            origin = torch.zeros(d)
            basis = torch.zeros(2, d)
            basis[0, x] = 1.0
            if d > 1:
                basis[1, y] = 1.0  # a 1-D latent: the y axis moves nothing
            dims = [x, y] if d > 1 else [x]
            top = len(e.model.latent_sizes)  # a hierarchy's map: its top layer's dimensions
            name = (lambda i: f"z{i + 1}") if top == 1 else (lambda i: f"z{top} dim {i + 1}")
            axes = [name(x), name(y) if d > 1 else "(none)"]
        mu = e.mu[:n]
        uv = (mu - origin) @ basis.T  # (n, 2)
        empty = torch.zeros(d)
        return LatentsResponse(
            model=e.name,
            plane=plane,
            dims=dims,
            axes=axes,
            n=len(mu),
            x=_floats(uv[:, 0], 4),
            y=_floats(uv[:, 1], 4),
            labels=None if e.labels is None else e.labels[:n].tolist(),
            origin=_floats(origin),
            basis=_floats(basis),
            center=_floats(e.mu.mean(0) if len(e.mu) else empty),
            low=_floats(e.mu.min(0).values if len(e.mu) else empty),
            high=_floats(e.mu.max(0).values if len(e.mu) else empty),
            confidence=None if dims is None else confidence_map(e, label, dims),
        )


# --------------------------------------------------------------------------------------------- app


def create_app(entries: list[Entry], loopback_only: bool = True) -> FastAPI:
    """The explorer's ASGI app over `entries` (load_entries). loopback_only: answer only requests whose Host
    header names a loopback address (DNS rebinding), as a server on 127.0.0.1 should."""
    # No /docs or /redoc: FastAPI serves them with scripts from a CDN, and this server loads nothing from
    # elsewhere. The schema itself is at /openapi.json.
    app = FastAPI(
        title="vaekit latent explorer",
        version="1",
        docs_url=None,
        redoc_url=None,
        description=(
            "Encode, decode, interpolate and sample the models `vaekit serve` loaded. Models are named by their "
            "index or name from /api/models. Images come back as PNG data URLs; images sent in are flat lists of "
            f"floats in [0, 1]. Request bodies are JSON, at most {MAX_BODY} bytes."
        ),
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        # FastAPI's shape without echoing the input back (it may be a megabyte of floats)
        errors = [
            {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
            for err in exc.errors()[:20]
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_api(app, Explorer(entries))
    posts = frozenset(r.path for r in app.routes if "POST" in getattr(r, "methods", ()))
    app.add_middleware(Guard, json_paths=posts, max_body=MAX_BODY, loopback_only=loopback_only)
    return app


def _add_api(app: FastAPI, ex: Explorer) -> None:
    """The /api/ endpoints, each a call into the Explorer."""

    # The endpoints are `async def`: each runs on the event loop, one at a time. A request is about a
    # millisecond of capped work, and serving them in turn beat FastAPI's thread pool here (1600 vs 940
    # decodes/s at 64 clients on 2 cores, p99 45 vs 170 ms: the pool's threads fight over the GIL).
    @app.get("/api/models", response_model=ModelsResponse, summary="The loaded models")
    async def models() -> ModelsResponse:
        return ex.info()

    @app.get(
        "/api/latents",
        response_model=LatentsResponse,
        responses=ERRORS,
        summary="Map points: test-set posterior means on a plane",
    )
    async def latents(
        model: Annotated[str, Query(min_length=1, max_length=200, description="Index or name.")] = "0",
        n: Annotated[int, Query(ge=1, le=MAP_POINTS, description="The first n points.")] = MAP_POINTS,
        plane: Annotated[
            Literal["auto", "pca", "dims"],
            Query(
                description="pca: the top-2 principal plane of the codes; dims: two latent dimensions x, y; "
                "auto: dims for latent_dim <= 2, else pca."
            ),
        ] = "auto",
        x: Annotated[int, Query(ge=0, lt=MAX_LATENT)] = 0,
        y: Annotated[int, Query(ge=0, lt=MAX_LATENT)] = 1,
        label: Annotated[
            int | None,
            Query(
                ge=0,
                le=2**31 - 1,
                description="A conditional model's label whose decoder the confidence background shows (default "
                "0); the map's codes are the test digits encoded with their own labels. Refused for an "
                "unconditional model.",
            ),
        ] = None,
    ) -> LatentsResponse:
        return ex.latents(model, n, plane, x, y, label)

    @app.post("/api/decode", response_model=DecodeResponse, responses=ERRORS, summary="z -> decoded image")
    async def decode(req: DecodeRequest) -> DecodeResponse:
        return ex.decode(req)

    @app.post(
        "/api/encode",
        response_model=EncodeResponse,
        responses=ERRORS,
        summary="An image (drawing or test example) -> posterior, reconstruction, ELBO, anomaly score",
    )
    async def encode(req: EncodeRequest) -> EncodeResponse:
        return ex.encode(req)

    @app.post("/api/sample", response_model=SampleResponse, responses=ERRORS, summary="A grid of prior draws")
    async def sample(req: SampleRequest) -> SampleResponse:
        return ex.sample(req)

    @app.post(
        "/api/interpolate",
        response_model=InterpolateResponse,
        responses=ERRORS,
        summary="A strip of decoded codes between two ends",
    )
    async def interpolate_(req: InterpolateRequest) -> InterpolateResponse:
        return ex.interpolate(req)
