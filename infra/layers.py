"""Build the Lambda layers and stage each function's code, without Docker.

Everything lands under `build/` (gitignored) and is rebuilt only when its inputs change: each
output directory has a stamp file beside it (`<dir>.stamp`) holding the hash of its inputs.

Layout produced (Lambda mounts layers at /opt):

    build/layers/deps/python/...            wheels for manylinux2014 aarch64, LAMBDA_PYTHON
    build/layers/shared/python/aigateway/   the shared library       -> /opt/python/aigateway
    build/layers/shared/prompts/            prompt templates         -> /opt/prompts
    build/layers/shared/openapi.json        the published OpenAPI    -> /opt/openapi.json
    build/functions/<name>/<name>/          one function's package   -> handler <name>.handler.lambda_handler

Lambda runtime: python<LAMBDA_PYTHON> on arm64. Python 3.11 (the venv's interpreter) can no
longer be deployed: AWS blocked creating python3.11 functions on 2026-07-31 (deprecated with Amazon
Linux 2 on 2026-06-30; cfn-lint E2533). So the deps wheels are resolved for LAMBDA_PYTHON and the
bytecode is compiled by a local CPython of that same minor version when one is found
($AIGATEWAY_LAMBDA_PYTHON, `python<LAMBDA_PYTHON>` on PATH, or pyenv); without one the layers ship source
only (correct, just a slower first import) and a warning says so.

Bytecode uses *unchecked-hash* pycs: the asset zips carry fixed timestamps and /opt is read-only,
so timestamp-validated pycs would be considered stale on Lambda and recompiled on every cold
start. Hash-based pycs are also byte-for-byte reproducible, which keeps CDK asset hashes stable.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"

# The Lambda runtime's Python (infra/functions.py maps it to the CDK Runtime). One place to change.
LAMBDA_PYTHON = "3.13"
PLATFORM = "manylinux2014_aarch64"
STAMP_SUFFIX = ".stamp"

# Bump to force every output to rebuild after a change to this module's logic.
_RECIPE_VERSION = "1"

# The Lambda Python runtime ships a matched boto3/botocore pair. aws-xray-sdk (via the Powertools
# tracer extra) pulls in botocore; shipping it would shadow the runtime's botocore with a version
# the runtime's boto3 was not released with, and it is the largest package in the layer.
PROVIDED_BY_RUNTIME = ("boto3", "botocore", "s3transfer")

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache")


def _log(message: str) -> None:
    print(f"[layers] {message}", file=sys.stderr, flush=True)


def _source_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(
                p
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
            )
    return sorted(files)


def _fingerprint(root: Path, paths: Iterable[Path], *extra: str) -> str:
    """Hash of file names and contents (relative to root) plus any extra strings."""
    digest = hashlib.sha256()
    for item in (_RECIPE_VERSION, *extra):
        digest.update(item.encode())
        digest.update(b"\0")
    for file in _source_files(paths):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(file.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _stamp(out: Path) -> Path:
    # Beside the output, not inside it: the output directory is the asset, byte for byte.
    return out.with_name(out.name + STAMP_SUFFIX)


def _is_current(out: Path, fingerprint: str) -> bool:
    stamp = _stamp(out)
    return out.is_dir() and stamp.is_file() and stamp.read_text().strip() == fingerprint


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One builder per output at a time (pytest-xdist workers, a synth beside a test run)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _reset(out: Path) -> None:
    _stamp(out).unlink(missing_ok=True)  # an interrupted build must never look current
    shutil.rmtree(out, ignore_errors=True)


def _write_stamp(out: Path, fingerprint: str) -> None:
    _stamp(out).write_text(fingerprint + "\n")


@functools.lru_cache(maxsize=1)
def bytecode_python() -> str | None:
    """A local CPython LAMBDA_PYTHON.x interpreter to compile the layers' bytecode, if any."""
    major, minor = LAMBDA_PYTHON.split(".")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [
        os.environ.get("AIGATEWAY_LAMBDA_PYTHON", ""),
        sys.executable,
        shutil.which(f"python{LAMBDA_PYTHON}") or "",
        *sorted(str(p) for p in pyenv.glob(f"{LAMBDA_PYTHON}.*/bin/python{LAMBDA_PYTHON}")),
    ]
    probe = "import sys; print(sys.implementation.name, *sys.version_info[:2])"
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.split() == ["cpython", major, minor]:
            return exe
    return None


def _bytecode_tag() -> str:
    exe = bytecode_python()
    return f"bytecode={LAMBDA_PYTHON}" if exe else "bytecode=none"


def _compile(path: Path) -> None:
    exe = bytecode_python()
    if exe is None:
        _log(f"warning: no local CPython {LAMBDA_PYTHON}; {path} ships without precompiled bytecode")
        return
    args = ["-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", str(path)]
    subprocess.run([exe, *args], check=True)


def _build(out: Path, fingerprint: str, message: str, populate: Callable[[], None]) -> Path:
    """Run populate() into a fresh `out` unless its stamp matches; safe across processes."""
    if _is_current(out, fingerprint):
        return out
    with _exclusive(out):
        if _is_current(out, fingerprint):  # another process built it while we waited
            return out
        _log(message)
        _reset(out)
        out.mkdir(parents=True)
        populate()
        _write_stamp(out, fingerprint)
    return out


def build_deps_layer(*, root: Path = ROOT, build: Path = BUILD) -> Path:
    """Third-party wheels for arm64 / CPython LAMBDA_PYTHON, precompiled. Returns the layer dir."""
    requirements = root / "layers" / "deps" / "requirements.txt"
    out = build / "layers" / "deps"
    site = out / "python"
    pip_args = [
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-warn-conflicts",
        "--no-warn-script-location",
        "--platform",
        PLATFORM,
        "--only-binary=:all:",
        "--python-version",
        LAMBDA_PYTHON,
        "--implementation",
        "cp",
    ]
    fingerprint = _fingerprint(root, [requirements], *pip_args, *PROVIDED_BY_RUNTIME, _bytecode_tag())

    def populate() -> None:
        target = ["--target", str(site), "-r", str(requirements)]
        subprocess.run([sys.executable, "-m", "pip", *pip_args, *target], check=True)
        for name in PROVIDED_BY_RUNTIME:
            for path in [site / name, *site.glob(f"{name}-*.dist-info")]:
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: unusable in a layer
        _compile(site)

    message = f"building deps layer for {PLATFORM} cp{LAMBDA_PYTHON} into {out} (pip download)"
    return _build(out, fingerprint, message, populate)


def _openapi_writer() -> Callable[[Path], object] | None:
    if importlib.util.find_spec("infra.openapi") is None:
        return None
    module = importlib.import_module("infra.openapi")
    writer: Callable[[Path], object] | None = getattr(module, "write", None)
    return writer


def build_shared_layer(*, root: Path = ROOT, build: Path = BUILD) -> Path:
    """The `aigateway` package, prompts/ and openapi.json. Returns the layer directory."""
    package = root / "layers" / "shared" / "python" / "aigateway"
    prompts = root / "prompts"
    out = build / "layers" / "shared"
    writer = _openapi_writer()
    # The OpenAPI document is generated from the route table and the functions' models.
    openapi_inputs = [root / "infra" / "openapi.py", root / "infra" / "routes.py", root / "functions"]
    fingerprint = _fingerprint(
        root,
        [package, prompts, *(openapi_inputs if writer else [])],
        f"openapi={bool(writer)}",
        _bytecode_tag(),
    )

    def populate() -> None:
        shutil.copytree(package, out / "python" / "aigateway", ignore=_IGNORE)
        if prompts.is_dir():
            shutil.copytree(prompts, out / "prompts", ignore=_IGNORE)
        else:
            (out / "prompts").mkdir()
        if writer is not None:
            writer(out / "openapi.json")
        _compile(out / "python")

    return _build(out, fingerprint, f"building shared layer into {out}", populate)


def stage_function(name: str, *, root: Path = ROOT, build: Path = BUILD) -> Path:
    """Copy functions/<name>/ to build/functions/<name>/<name>/; returns the asset directory.

    The asset root holds only the package, so the handler is `<name>.handler.lambda_handler` and
    each function's modules live under its own package name (no clashes between functions).
    """
    source = root / "functions" / name
    if not (source / "handler.py").is_file():
        raise FileNotFoundError(f"function {name!r}: {source / 'handler.py'} does not exist")
    out = build / "functions" / name
    fingerprint = _fingerprint(root, [source], name, _bytecode_tag())

    def populate() -> None:
        shutil.copytree(source, out / name, ignore=_IGNORE)
        init = out / name / "__init__.py"
        if not init.exists():
            init.write_text("")
        _compile(out / name)

    return _build(out, fingerprint, f"staging function {name} into {out}", populate)
