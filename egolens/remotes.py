"""The DVC remotes the study documents (README "Sharing results"), as the `dvc remote` commands that
configure them, and the one message that says what to configure when none is.

DVC 3 cannot be made to say this itself: `dvc pull` without a remote prints its own "No remote
provided", and a placeholder default remote in `.dvc/config` breaks other commands (one that names
no defined remote fails `dvc plots show` and `dvc exp show`, which resolve the default remote too;
a local path either takes the pushes or fails every transfer with an OS error). So
`python -m presets remote` says it instead (README "Before any remote is configured").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteKind:
    """One kind of remote: the name `dvc remote add` gives it, what its URL looks like, and for whom."""

    name: str
    example: str
    what: str


KINDS = {
    "shared": RemoteKind("shared", "/path/to/egolens-dvc", "a directory every machine can reach (network drive, "
                         "lab server)"),
    "s3": RemoteKind("s3remote", "s3://bucket/egolens", "an S3-compatible bucket (AWS S3, MinIO, Ceph; add "
                     "--endpoint-url URL for one that is not AWS; credentials from AWS_ACCESS_KEY_ID / "
                     "AWS_SECRET_ACCESS_KEY or `dvc remote modify --local`)"),
}


def check_url(kind: str, url: str) -> None:
    """Fail, naming the kinds, for an unknown kind or a URL of the wrong kind (an s3 URL without s3://)."""
    if kind not in KINDS:
        raise ValueError(f"remote kind {kind!r}: the kinds are {', '.join(KINDS)}")
    if (kind == "s3") != url.startswith("s3://"):
        raise ValueError(f"{kind} remote {url!r}: " + ("an s3 URL starts with s3://" if kind == "s3" else
                                                       f"a shared directory is a path; for {url!r} use `s3`"))


def configure_commands(kind: str, url: str, endpoint_url: str | None = None, local: bool = False) -> list[list[str]]:
    """The `dvc remote` commands that make `url` the default remote of this kind (replacing one of the
    same name); `local` writes them to the git-ignored .dvc/config.local instead of .dvc/config."""
    check_url(kind, url)
    if endpoint_url and kind != "s3":
        raise ValueError("--endpoint-url: only an s3 remote has an endpoint URL")
    scope = ["--local"] if local else []
    name = KINDS[kind].name
    commands = [["dvc", "remote", "add", *scope, "--default", "--force", name, url]]
    if endpoint_url:
        commands.append(["dvc", "remote", "modify", *scope, name, "endpointurl", endpoint_url])
    return commands


def what_to_configure() -> str:
    """The one message for a clone without a default remote: each kind, with the command that configures it."""
    kinds = "; ".join(f"{kind.what}: `python -m presets remote {key} {kind.example}`" for key, kind in KINDS.items())
    return (f"No DVC remote is configured, so `dvc pull` and `dvc push` have nowhere to go. Configure one of the "
            f"kinds README \"Sharing results\" documents: {kinds}. Add --local to keep it out of git; without "
            f"it, commit .dvc/config so that every clone has it.")
