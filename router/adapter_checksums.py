"""sha256 pins of embedded adapter files: checking them, and installing an adapter by atomic rename.

An adapter file is pinned by ``backend.adapter_sha256.<name>`` in the config, or by a
``SHA256SUMS`` file (``sha256sum`` format, paths relative to its own folder) in the adapter's
folder or in the model folder. onnxruntime-genai memory-maps adapter files, and overwriting or
truncating a loaded file in place crashes the process with SIGBUS. So a new adapter file is
written to a temporary file in the same folder and renamed over the old one: a running model
keeps reading the old file's data, which the file system frees once the model drops it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from router.config import ConfigError, EmbeddedBackendSettings, GatewayConfig

logger = logging.getLogger(__name__)

CHECKSUMS_FILE = "SHA256SUMS"
ADAPTER_SUFFIX = ".onnx_adapter"
_READ_BYTES = 1 << 20
_CHECKSUM_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]{64}) [ *](?P<path>.+)")
_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class InstalledAdapter:
    """An adapter file that :func:`install_adapter` put in place."""

    path: Path
    sha256: str
    checksum_files: tuple[Path, ...]
    """The ``SHA256SUMS`` files whose line for the adapter was written."""


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in _read_blocks(path):
        digest.update(block)
    return digest.hexdigest()


def adapter_file_paths(settings: EmbeddedBackendSettings, adapters: Iterable[str]) -> dict[str, Path]:
    """Return each adapter's file: its ``adapter_files`` entry, else ``<model>/adapters/<name>.onnx_adapter``.

    This is the rule :meth:`EmbeddedBackend.from_settings` loads adapters by.
    """
    return {
        name: Path(
            settings.adapter_files.get(name) or Path(settings.model) / "adapters" / f"{name}{ADAPTER_SUFFIX}"
        )
        for name in adapters
    }


def check_adapter_checksums(config: GatewayConfig) -> dict[str, str]:
    """Check every embedded adapter file against its sha256 pins, and return each file's digest.

    Files that do not exist are skipped, because ``check_config_files`` reports them. An
    upstream backend has no adapter files, so the result is empty for it.

    Raises
    ------
    ConfigError
        With one line per mismatch, naming the file, both digests and the fix, and one line per
        pin for an adapter the config does not serve or per malformed ``SHA256SUMS`` line.
    """
    backend = config.backend
    if not isinstance(backend, EmbeddedBackendSettings):
        return {}

    adapters = sorted({adapter for adapter in config.adapters.values() if adapter is not None})
    problems = [
        f"backend.adapter_sha256.{name}: no domain is mapped to adapter '{name}': "
        "remove the pin or map a domain to the adapter under adapters"
        for name in sorted(set(backend.adapter_sha256) - set(adapters))
    ]
    digests: dict[str, str] = {}
    listed: dict[Path, dict[Path, str]] = {}
    for name, path in adapter_file_paths(backend, adapters).items():
        if not path.is_file():
            continue
        digests[name] = file_sha256(path)

        pinned = backend.adapter_sha256.get(name)
        if pinned is not None and pinned != digests[name]:
            problems.append(
                f"backend.adapter_sha256.{name}: adapter file {path} has sha256 {digests[name]}, "
                f"but the config pins {pinned}: install the intended file with "
                "`adapter-router install-adapter`, or set the pin to the file's digest"
            )
        for checksums in _checksum_files(path, Path(backend.model)):
            if checksums not in listed:
                listed[checksums] = _read_checksums_or_report(checksums, problems)
            expected = listed[checksums].get(path.resolve())
            if expected is not None and expected != digests[name]:
                problems.append(
                    f"adapter file {path} (adapter '{name}') has sha256 {digests[name]}, but {checksums} "
                    f"lists {expected}: install the intended file with `adapter-router install-adapter` "
                    "(it updates SHA256SUMS), or correct that line"
                )
    if problems:
        raise ConfigError("\n".join(problems))
    return digests


def install_adapter(
    source: Path, model_dir: Path, name: str, *, expected_sha256: str | None = None
) -> InstalledAdapter:
    """Install ``source`` as ``<model_dir>/adapters/<name>.onnx_adapter`` without writing the old file.

    The bytes are copied to a temporary file in the same folder, hashed on the way, checked
    against ``expected_sha256``, flushed to disk, and renamed over the old file. The line for
    the adapter in ``SHA256SUMS`` (in the adapters folder or the model folder, where one
    exists) is then rewritten the same way.

    Raises
    ------
    ConfigError
        If the name is not a plain file name, ``source`` or ``model_dir`` does not exist, or the
        copy's digest differs from ``expected_sha256``. The old adapter file is then unchanged.
    """
    if not _ADAPTER_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid adapter name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    if not source.is_file():
        raise ConfigError(f"adapter file not found: {source}: pass an existing .onnx_adapter file")
    if not model_dir.is_dir():
        raise ConfigError(
            f"model folder not found: {model_dir}: pass the folder of the exported model to --model"
        )

    folder = model_dir / "adapters"
    folder.mkdir(exist_ok=True)
    target = folder / f"{name}{ADAPTER_SUFFIX}"
    mode = stat.S_IMODE((target if target.is_file() else source).stat().st_mode)
    temporary, digest = _write_temporary(folder, target.name, _read_blocks(source), mode)
    try:
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise ConfigError(
                f"{source} has sha256 {digest}, not the expected {expected_sha256.lower()}: "
                f"check that it is the intended adapter file; {target} is unchanged"
            )
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    logger.info("installed adapter %s from %s as %s (sha256 %s)", name, source, target, digest)

    written = tuple(
        checksums
        for checksums in _checksum_files(target, model_dir)
        if _write_checksum(checksums, target, digest)
    )
    return InstalledAdapter(target, digest, written)


def _checksum_files(adapter_file: Path, model_dir: Path) -> list[Path]:
    """Return the existing ``SHA256SUMS`` files that may pin ``adapter_file``."""
    candidates = [adapter_file.parent / CHECKSUMS_FILE, model_dir / CHECKSUMS_FILE]
    existing: list[Path] = []
    for candidate in candidates:
        if candidate.is_file() and all(candidate.resolve() != seen.resolve() for seen in existing):
            existing.append(candidate)
    return existing


def _read_checksums_or_report(checksums: Path, problems: list[str]) -> dict[Path, str]:
    """Return the digests ``checksums`` lists, by resolved path. Malformed lines go to ``problems``."""
    listed: dict[Path, str] = {}
    for number, line in enumerate(checksums.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = _CHECKSUM_LINE.fullmatch(line)
        if match is None:
            problems.append(
                f"{checksums} line {number}: expected '<64 hex digits>  <path>' as sha256sum writes it: "
                "correct the line or regenerate the file with sha256sum"
            )
            continue
        listed[(checksums.parent / match["path"]).resolve()] = match["digest"].lower()
    return listed


def _write_checksum(checksums: Path, adapter_file: Path, digest: str) -> bool:
    """Set the line for ``adapter_file`` in ``checksums`` to ``digest``, and return whether it was written.

    A file without a line for the adapter that lists no adapter file at all is left alone, so
    an unrelated ``SHA256SUMS`` does not gain lines.
    """
    resolved = adapter_file.resolve()
    relative = os.path.relpath(resolved, checksums.parent.resolve())
    lines = checksums.read_text(encoding="utf-8").splitlines()
    replaced = False
    for index, line in enumerate(lines):
        match = _CHECKSUM_LINE.fullmatch(line)
        if match is not None and (checksums.parent / match["path"]).resolve() == resolved:
            lines[index] = f"{digest}  {match['path']}"
            replaced = True
    if not replaced:
        listed_adapters = [
            line
            for line in lines
            if (match := _CHECKSUM_LINE.fullmatch(line)) and match["path"].endswith(ADAPTER_SUFFIX)
        ]
        if not listed_adapters:
            return False
        lines.append(f"{digest}  {Path(relative).as_posix()}")

    content = ("\n".join(lines) + "\n").encode()
    mode = stat.S_IMODE(checksums.stat().st_mode)
    temporary, _ = _write_temporary(checksums.parent, checksums.name, [content], mode)
    os.replace(temporary, checksums)
    _fsync_folder(checksums.parent)
    return True


def _read_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while block := file.read(_READ_BYTES):
            yield block


def _write_temporary(folder: Path, name: str, blocks: Iterable[bytes], mode: int) -> tuple[Path, str]:
    """Write ``blocks`` to a new hidden file in ``folder`` and flush it to disk. Return it and its sha256."""
    digest = hashlib.sha256()
    descriptor, temporary_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "wb") as output:
            for block in blocks:
                digest.update(block)
                output.write(block)
            output.flush()
            os.fchmod(output.fileno(), mode)  # mkstemp creates the file readable by its owner only
            os.fsync(output.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary, digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries, so a rename inside it survives a power loss."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
