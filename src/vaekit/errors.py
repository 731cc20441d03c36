"""The one user-facing error type (the CLI prints it as `error: ...` and exits 2), and telling
torch.compile failures apart."""


class VaekitError(Exception):
    """Bad input or bad usage, described in one line that names the file or flag and the problem.

    `option`: the training option the error is about, as a config field name ("latent_dim"), when it is
    about one; `options.Options.naming_sources` uses it to name the file the bad value came from."""

    def __init__(self, message: str = "", *, option: str | None = None):
        super().__init__(message)
        self.option = option


def is_compile_error(e: BaseException) -> bool:
    """Whether `e` is torch.compile failing (no C++ compiler, an unsupported op...), not the model's own error."""
    return type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))
