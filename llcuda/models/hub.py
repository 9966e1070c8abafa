"""Hugging Face hub files: resolve URLs, the HEAD that tells size and sha256, hub errors.

``{HF_ENDPOINT}/{owner}/{repo}/resolve/{revision}/{file}`` answers a HEAD with the file's
sha256 in ``X-Linked-Etag`` (LFS files; ``ETag`` otherwise) and its size in ``X-Linked-Size``,
and redirects a GET to a CDN. Mirrors set with ``HF_ENDPOINT`` behave the same. ``HF_TOKEN``
is sent to the endpoint only (requests drops it when redirected to another host) and is never
logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote, urljoin, urlsplit

from llcuda import config
from llcuda.errors import DownloadError, ModelNotFoundError
from llcuda.models.download import Fetched, etag_sha256, fetch, http_error, normalize_etag, request

if TYPE_CHECKING:
    import requests

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_RELATIVE_REDIRECTS = 5


@dataclass(frozen=True)
class HubFile:
    repo: str
    file: str
    revision: str = "main"

    def __post_init__(self) -> None:
        if not _REPO.match(self.repo) or ".." in self.repo:
            raise ModelNotFoundError(f"{self.repo!r} is not a Hugging Face repository id (expected owner/name).")
        if not self.file or self.file.startswith("/") or ".." in self.file.split("/"):
            raise ModelNotFoundError(f"{self.file!r} is not a file path inside {self.repo}.")

    @property
    def spec(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"hf://{self.repo}{rev}/{self.file}"

    def url(self, endpoint: str | None = None) -> str:
        base = (endpoint or config.hf_endpoint()).rstrip("/")
        return f"{base}/{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(self.file)}"


def parse_hf(spec: str) -> HubFile:
    """``owner/repo[@rev]/path/file.gguf`` (after ``hf://``) or ``owner/repo[@rev]:path/file.gguf``."""
    match = re.fullmatch(r"([^/@:]+/[^/@:]+)(?:@([^/:]+))?[:/](.+)", spec.strip())
    if not match:
        raise ModelNotFoundError(
            f"{spec!r} does not name a file in a repository. Use hf://owner/repo/file.gguf or owner/repo:file.gguf."
        )
    repo, rev, file = match.groups()
    if not file.endswith(".gguf"):
        raise ModelNotFoundError(
            f"{file!r} in {repo} is not a .gguf file. llama.cpp loads GGUF files: pick one from the repository's "
            "file list (e.g. a *-Q4_K_M.gguf)."
        )
    return HubFile(repo, file, rev or "main")


def auth_headers(url: str) -> dict[str, str]:
    """The Authorization header for the hub endpoint (never for other hosts)."""
    token = config.hf_token()
    if token and urlsplit(url).netloc == urlsplit(config.hf_endpoint()).netloc:
        return {"Authorization": f"Bearer {token}"}
    return {}


@dataclass(frozen=True)
class Remote:
    url: str
    size: int | None
    sha256: str | None  # from the linked ETag of LFS files
    etag: str | None
    commit: str | None


def _hub_error(resp: Any, hf: HubFile, url: str) -> Exception:
    code = resp.status_code
    kind = resp.headers.get("X-Error-Code", "")
    where = f"{config.hf_endpoint()}/{hf.repo}"
    token_note = (
        " The token in HF_TOKEN was not accepted for it." if config.hf_token() else " If it is private, set HF_TOKEN."
    )
    if kind == "GatedRepo":
        return DownloadError(
            f"{hf.repo} is a gated repository: accept its license at {where} while logged in, then set HF_TOKEN "
            "to a read token of that account."
        )
    if kind == "RepoNotFound" or (code == 401 and not kind):
        return ModelNotFoundError(f"Repository {hf.repo} was not found on {config.hf_endpoint()}.{token_note}")
    if kind == "RevisionNotFound":
        return ModelNotFoundError(f"Revision {hf.revision!r} does not exist in {hf.repo}. See {where}/tree/main.")
    if kind == "EntryNotFound" or code == 404:
        return ModelNotFoundError(
            f"File {hf.file!r} is not in {hf.repo} at {hf.revision}. See the file list at {where}/tree/{hf.revision}."
        )
    if code in (401, 403):
        return DownloadError(f"{hf.spec}: access denied (HTTP {code}).{token_note}")
    return http_error(resp, url, hf.spec)


def head(hf: HubFile, sess: requests.Session) -> Remote:
    """Size, sha256 and ETag of a hub file, following only same-host (relative) redirects."""
    url = hf.url()
    for _ in range(MAX_RELATIVE_REDIRECTS + 1):
        resp = request(
            sess, "HEAD", url, what=hf.spec, accept_errors=True, allow_redirects=False, headers=auth_headers(url)
        )
        resp.close()
        if resp.status_code >= 400:
            raise _hub_error(resp, hf, url)
        location = resp.headers.get("Location")
        if resp.is_redirect and location and not urlsplit(location).netloc:
            url = urljoin(url, location)  # a renamed repository: keep asking the hub
            continue
        headers = resp.headers
        linked_size = headers.get("X-Linked-Size")
        length = headers.get("Content-Length") if resp.status_code == 200 else None
        size_raw = linked_size or length
        raw_etag = headers.get("X-Linked-Etag") or headers.get("ETag")
        return Remote(
            url=url,
            size=int(size_raw) if size_raw and size_raw.isdigit() else None,
            sha256=etag_sha256(raw_etag),
            etag=normalize_etag(raw_etag),
            commit=headers.get("X-Repo-Commit"),
        )
    raise DownloadError(f"{hf.spec}: too many redirects from {config.hf_endpoint()}.")


def download(
    hf: HubFile,
    dest: Path,
    sess: requests.Session,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool | None = None,
    check: Callable[[Path], object] | None = None,
) -> tuple[Fetched, Remote]:
    """Download a hub file to ``dest`` (caller holds the lock), verified against the pinned
    ``sha256``/``size`` when given, else against what the hub announces."""
    remote = head(hf, sess)
    if sha256 and remote.sha256 and remote.sha256 != sha256:
        from llcuda.errors import ChecksumError

        raise ChecksumError(
            f"{hf.spec} on {config.hf_endpoint()} now has sha256 {remote.sha256}, not the pinned {sha256}: the "
            f"upstream file changed. Use {hf.spec} directly to get the current file."
        )
    if size is not None and remote.size is not None and remote.size != size:
        from llcuda.errors import ChecksumError

        raise ChecksumError(
            f"{hf.spec} on {config.hf_endpoint()} has {remote.size} bytes, not the pinned {size}: the upstream "
            f"file changed. Use {hf.spec} directly to get the current file."
        )
    fetched = fetch(
        remote.url,
        dest,
        sha256=sha256 or remote.sha256,
        size=size if size is not None else remote.size,
        etag=None if (sha256 or remote.sha256) else remote.etag,
        headers=auth_headers(remote.url),
        what=hf.spec,
        progress=progress,
        sess=sess,
        check=check,
    )
    return fetched, remote
