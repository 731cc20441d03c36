"""The one user-facing error type (the CLI prints it as `error: ...` and exits 2), and telling
torch.compile failures apart."""


class VaekitError(Exception):
    """Bad input or bad usage, described in one line that names the file or flag and the problem."""


def is_compile_error(e: BaseException) -> bool:
    """Whether `e` is torch.compile failing (no C++ compiler, an unsupported op...), not the model's own error."""
    return type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))
