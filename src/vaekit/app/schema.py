"""The explorer API's requests and responses as pydantic models: the OpenAPI schema, and the first check of
every input (types, finite values, ranges, list lengths, unknown fields). What depends on the chosen model
(z has exactly its latent_dim values, pixels exactly its image size) is checked in server.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, model_validator

MAX_BODY = 1 << 20  # bytes in a request body
MAP_POINTS = 2000  # test examples on the map (and the ones a request may pick by index)
MAX_SAMPLES = 100  # images in one /api/sample grid
MAX_STEPS = 32  # images in one interpolation strip
MAX_LATENT = 1024  # the longest z the schema admits; each model then wants exactly its own D
MAX_PIXELS = 1 << 16  # the longest pixel list the schema admits; each model wants exactly prod(shape)
Z_BOUND = 1e3  # |z_d| above this is refused: finite, and far outside any trained code
ELBO_SAMPLES = 16  # posterior draws behind the ELBO of a drawing (fixed noise: same drawing, same number)


def _whole(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def Int(**limits):
    """An integer as JSON Schema means one: 8.0 is one; "8" and true are not (lax pydantic takes both,
    strict refuses 8.0). The limits sit inside, where the schema shows them."""
    return Annotated[int, Field(strict=True, **limits), BeforeValidator(_whole)]


ModelRef = Annotated[
    Int(ge=0) | Annotated[StrictStr, Field(min_length=1, max_length=200)],
    Field(description="A model: its index in /api/models, or its name there. Never a path.", examples=[0, "vae"]),
]
Coord = Annotated[float, Field(ge=-Z_BOUND, le=Z_BOUND, allow_inf_nan=False)]
Pixel = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Latent = Annotated[
    list[Coord],
    Field(
        min_length=1,
        max_length=MAX_LATENT,
        description="A latent vector: exactly the model's latent_dim finite floats.",
    ),
]
Pixels = Annotated[
    list[Pixel],
    Field(
        min_length=1,
        max_length=MAX_PIXELS,
        description=(
            "An image as floats in [0, 1], flattened row-major from the model's input_shape (C, H, W): exactly "
            "prod(input_shape) values (784 for MNIST). 0 is black (background), 1 is white (ink)."
        ),
    ),
]
Index = Annotated[
    Int(ge=0, lt=MAP_POINTS),
    Field(description=("A test example shown on the map: 0 <= index < the model's `points` in /api/models.")),
]
Image = Annotated[str, Field(description="A PNG image as a data URL: data:image/png;base64,...")]
Label = Annotated[
    Int(ge=0, le=2**31 - 1),
    Field(
        description=(
            "A conditional model's class label: 0 <= label < its num_classes in /api/models; it conditions the "
            "encoder and the decoder. A conditional model needs one; an unconditional model (num_classes 0) "
            "takes none, and a label sent to it is refused (422)."
        )
    ),
]


class _Request(BaseModel):
    # strict: no "1.5" for a number or true for an integer; what the schema says is what is accepted
    model_config = ConfigDict(extra="forbid", strict=True)


def _one_of(*names: str) -> dict:
    """Schema for "exactly one of these fields" (the validator below enforces it)."""
    return {"oneOf": [{"required": [n]} for n in names]}


def _exactly_one(obj, names: tuple[str, ...]):
    given = [n for n in names if n in obj.model_fields_set]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)} (got {', '.join(given) or 'none'})")
    return obj


# `index: Index = None`: optional but never null (pydantic does not validate a default; an explicit null
# fails the type), so the schema says "an integer, if given" and an error names the field plainly.
class Source(_Request):
    """An image to encode: a test example of the map by index, or pixels (a drawing)."""

    model_config = ConfigDict(json_schema_extra=_one_of("index", "pixels"))
    index: Index = None
    pixels: Pixels = None

    @model_validator(mode="after")
    def _one(self):
        return _exactly_one(self, ("index", "pixels"))


class End(_Request):
    """One end of an interpolation: a test example, a drawing's pixels (encoded to their mean), or a z."""

    model_config = ConfigDict(json_schema_extra=_one_of("index", "pixels", "z"))
    index: Index = None
    pixels: Pixels = None
    z: Latent = None

    @model_validator(mode="after")
    def _one(self):
        return _exactly_one(self, ("index", "pixels", "z"))


class DecodeRequest(_Request):
    model: ModelRef = 0
    z: Latent
    label: Label = None


class EncodeRequest(Source):
    model: ModelRef = 0
    label: Label = Field(
        None,
        description="A conditional model's label to encode (and decode) the image with; a test example (index) "
        "defaults to its own label, as on the map. Refused for an unconditional model.",
    )


class SampleRequest(_Request):
    model: ModelRef = 0
    label: Label = None
    n: Int(ge=1, le=MAX_SAMPLES) = Field(16, description="How many prior draws.")
    seed: Int(ge=0, le=2**31 - 1) = Field(0, description="The same seed gives the same draws.")
    nrow: Int(ge=1, le=MAX_SAMPLES) = Field(None, description="Images per grid row (default: about square).")


class InterpolateRequest(_Request):
    model: ModelRef = 0
    start: End
    end: End
    steps: Int(ge=2, le=MAX_STEPS) = Field(10, description="Images in the strip, both ends included.")
    spherical: bool = Field(False, description="Spherical (slerp) instead of linear interpolation.")
    label: Label = Field(
        None,
        description="A conditional model's label: the path is decoded with it, and a drawing's end encoded with "
        "it (a test example's end is encoded with its own label, as on the map). Refused for an unconditional model.",
    )


class Limits(BaseModel):
    max_body_bytes: int = MAX_BODY
    map_points: int = MAP_POINTS
    max_samples: int = MAX_SAMPLES
    max_steps: int = MAX_STEPS
    z_bound: float = Z_BOUND


class ThresholdInfo(BaseModel):
    """The run's calibrated threshold (its threshold.json, written by `vaekit score --fpr`)."""

    value: float = Field(allow_inf_nan=False, description="Scores above this are outliers, in nats.")
    fpr: float = Field(
        gt=0,
        lt=1,
        description="The false-positive rate it was calibrated at: at most this fraction of the held-out "
        "in-distribution examples it was calibrated on scored above it.",
    )
    n: int = Field(ge=1, description="How many examples it was calibrated on.")


class AnomalyScore(BaseModel):
    """How unlike the training data an image is (vaekit.anomaly, the numbers `vaekit score` writes)."""

    score: float = Field(
        allow_inf_nan=False,
        description="-log of the smaller calibrated tail p of neg_elbo - complexity and the orientation (as "
        "`vaekit score` writes it): higher = less like the training data.",
    )
    neg_elbo: float = Field(
        allow_inf_nan=False,
        description="-ELBO in nats of the image binarized as the run's data was (one posterior draw, seeded).",
    )
    complexity: float = Field(
        ge=0,
        allow_inf_nan=False,
        description="The image's lossless code length in nats (a context model of the binarized image; zlib for "
        "grey ones).",
    )
    binarize: str = Field(description="How the image was binarized before scoring: dynamic, static or none.")
    seed: int = Field(ge=0, description="The seed of that binarization and of the posterior draw.")
    threshold: ThresholdInfo | None = Field(description="The run's threshold; None when it has no threshold.json.")
    outlier: bool | None = Field(description="score > threshold.value; None without a threshold.")


class ModelInfo(BaseModel):
    index: int
    name: str
    kind: Literal["vae", "ae"]
    latent_dim: int = Field(
        description="The size of every z this API shows and takes (sliders, map, /api/decode, /api/interpolate): "
        "the model's D, or with stochastic layers the top layer's."
    )
    latent_sizes: list[int] = Field(
        description="The stochastic layers' sizes, bottom (z1, next to x) to top; one entry for a one-layer model. "
        "With more, z here is the top layer's and a decoded point has the layers below at their means under p."
    )
    input_shape: list[int]
    arch: str
    likelihood: str
    prior: str | None = Field(
        None, description="p(z) in words: N(0, I), a VampPrior (K=500 pseudo-inputs), ...; None for an AE."
    )
    data: str = Field(description="The data the map shows: a built-in dataset's name, or a file's name.")
    split: Literal["test", "file"] = Field(
        description=(
            "test: the dataset's test split; file: the first examples of the file the model was trained on "
            "(a file has no test split)."
        )
    )
    points: int = Field(description="Test examples on the map; /api/encode and /api/interpolate take index < points.")
    has_labels: bool
    num_classes: int = Field(
        description="A conditional model's label classes (requests then take a label 0..num_classes-1); 0: "
        "unconditional. A conditional model's map shows the test digits encoded with their own labels."
    )
    confidence_map: bool = Field(
        description="Whether /api/latents (plane=dims) gives a confidence background: a 2-D model with the "
        "reference classifier loaded."
    )
    elbo_mean: float | None = Field(description="Mean ELBO of the map's examples in nats (None for an AE).")
    recon_mean: float | None = Field(description="Mean E_q log p(x|z) of the map's examples in nats.")
    threshold: ThresholdInfo | None = Field(description="The run's anomaly threshold; None when it has none.")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    limits: Limits
    classifier: str | None = Field(
        description="The reference classifier's folder name, when `vaekit serve` was given one; None otherwise."
    )


class ConfidenceMap(BaseModel):
    """The reference classifier on the decoder's images over a grid of the map's plane (vaekit.claims_latent.
    hole_map, with the report's settings): where the decoded image is a digit, and where it is a hole."""

    label: int | None = Field(description="The label the decoder was given (a conditional model); None otherwise.")
    size: int = Field(description="Grid points per side, n.")
    x: list[float] = Field(description="(n,) the grid columns' plane x, increasing (the 1st-99th percentile box).")
    y: list[float] = Field(description="(n,) the grid rows' plane y, decreasing: row 0 is the top.")
    confidence: list[list[float]] = Field(
        description="(n, n) the classifier's top class probability of the image decoded at each grid point."
    )
    hole: list[list[bool]] = Field(
        description="(n, n) holes: confidence below `threshold`, or the image's features atypical of real digits."
    )
    threshold: float
    hole_fraction: float = Field(description="The share of the grid points that are holes.")


class LatentsResponse(BaseModel):
    model: str
    plane: Literal["pca", "dims"]
    dims: list[int] | None = Field(description="For plane=dims: the two latent dimensions shown (x, y).")
    axes: list[str] = Field(description="Axis labels, x then y.")
    n: int
    x: list[float] = Field(description="Plane coordinates of the n test examples (example i is index i).")
    y: list[float]
    labels: list[int] | None
    origin: list[float] = Field(description="A point of the plane in latent space (D,).")
    basis: list[list[float]] = Field(
        description=(
            "Two orthonormal latent directions (2, D): a code z shows at ((z - origin) . basis[0], "
            "(z - origin) . basis[1]); the plane point (u, v) with the other coordinates at an anchor a is "
            "a + (u - u_a) basis[0] + (v - v_a) basis[1]."
        )
    )
    center: list[float] = Field(description="The mean code of the map's examples (D,): the default anchor.")
    low: list[float] = Field(description="Per-dimension minimum of the map's codes (D,).")
    high: list[float] = Field(description="Per-dimension maximum of the map's codes (D,).")
    confidence: ConfidenceMap | None = Field(
        description="The background of a 2-D model's map (plane=dims) when the reference classifier is loaded."
    )


class DecodeResponse(BaseModel):
    model: str
    label: int | None = Field(description="The label the decoder was given; None for an unconditional model.")
    image: Image


class EncodeResponse(BaseModel):
    model: str
    mu: list[float] = Field(description="Posterior mean (D,); for an AE, its code.")
    sigma: list[float] = Field(description="Posterior standard deviation (D,); zeros for an AE.")
    image: Image = Field(description="The image that was encoded.")
    label: int | None = Field(description="The label the image was encoded with; None: an unconditional model.")
    reconstruction: Image = Field(description="The decoded mean at mu.")
    restyled: Image | None = Field(
        description="A conditional model's mu decoded under every label 0..num_classes-1, one strip left to right "
        "with 2-pixel gutters (z carries the style, the label the class); None for an unconditional model."
    )
    elbo: float | None = Field(
        description=f"ELBO in nats ({ELBO_SAMPLES} posterior draws, analytic KL); None for an AE."
    )
    recon: float = Field(description="E_q log p(x|z) in nats (for an AE: log p(x|z) at its code).")
    kl: float | None = Field(description="KL(q(z|x) || p(z)) in nats; None for an AE.")
    anomaly: AnomalyScore = Field(
        description="The image's anomaly score, and the verdict when the run has a threshold."
    )


class SampleResponse(BaseModel):
    model: str
    label: int | None = Field(description="The label every draw was decoded with; None: an unconditional model.")
    n: int
    nrow: int
    image: Image = Field(description="The n decoded prior draws as one grid, nrow per row, 2-pixel white gutters.")


class InterpolateResponse(BaseModel):
    model: str
    label: int | None = Field(description="The label the path was decoded with; None: an unconditional model.")
    steps: int
    spherical: bool
    image: Image = Field(description="The steps decoded codes as one strip, left to right, 2-pixel gutters.")
    z: list[list[float]] = Field(description="The path's codes (steps, D).")


class Message(BaseModel):
    detail: str


ERRORS = {
    400: {"model": Message, "description": "Body not UTF-8 JSON, or a Host header that is not loopback"},
    404: {"model": Message, "description": "Unknown model"},
    413: {"model": Message, "description": "Request body over the size limit"},
    415: {"model": Message, "description": "Body is not application/json"},
}
