"""Hugging Face hub: spec parsing, quantization lookup in a repository's file list, file
downloads (the HEAD that tells size and sha256), hub errors.

Specs (after an optional ``hf://``, ``hf.co/`` or ``huggingface.co/`` prefix)::

    owner/repo[@rev]:path/file.gguf   a file (also hf://owner/repo[@rev]/path/file.gguf)
    owner/repo[@rev]:QUANT            the file of that quantization, e.g. Q4_K_M
    owner/repo[@rev]                  the default quantization, Q4_K_M (see select_file)

>>> parse_hf("unsloth/Qwen3-0.6B-GGUF:q4_k_m")
HubQuery(repo='unsloth/Qwen3-0.6B-GGUF', quant='q4_k_m', revision='main')
>>> parse_hf("owner/repo@v1.0:sub/model-Q8_0.gguf").file
'sub/model-Q8_0.gguf'

A quantization is looked up in ``GET {HF_ENDPOINT}/api/models/{repo}/revision/{rev}`` (its
``siblings`` list every file). ``{HF_ENDPOINT}/{owner}/{repo}/resolve/{revision}/{file}`` answers
a HEAD with the file's sha256 in ``X-Linked-Etag`` (LFS files; ``ETag`` otherwise) and its size in
``X-Linked-Size``, and redirects a GET to a CDN. Mirrors set with ``HF_ENDPOINT`` behave the same.
The token (:func:`llcuda.config.hf_token`) is sent to the endpoint only (requests drops it when
redirected to another host) and is never logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Union
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


_QUANT_TAG = re.compile(r"[A-Za-z0-9][\w.+-]*")
PREFIXES = ("hf://", "hf.co/", "huggingface.co/")
DEFAULT_QUANT = "Q4_K_M"


@dataclass(frozen=True)
class HubQuery:
    """A quantization to look up in a repository's file list; ``quant=None`` asks for the default."""

    repo: str
    quant: str | None = None
    revision: str = "main"

    def __post_init__(self) -> None:
        if not _REPO.match(self.repo) or ".." in self.repo:
            raise ModelNotFoundError(f"{self.repo!r} is not a Hugging Face repository id (owner/name).")
        if self.quant is not None and not _QUANT_TAG.fullmatch(self.quant):
            raise ModelNotFoundError(
                f"{self.quant!r} is neither a .gguf file nor a quantization such as Q4_K_M. "
                f"Use {self.repo}:Q4_K_M or {self.repo}:path/file.gguf."
            )

    @property
    def spec(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"hf://{self.repo}{rev}" + (f":{self.quant}" if self.quant else "")

    def file(self, path: str) -> HubFile:
        return HubFile(self.repo, path, self.revision)


HubRef = Union[HubFile, HubQuery]


def strip_prefix(spec: str) -> str | None:
    """``spec`` without its ``hf://``, ``hf.co/`` or ``huggingface.co/`` prefix (None if it has none)."""
    for prefix in PREFIXES:
        if spec[: len(prefix)].lower() == prefix:
            return spec[len(prefix) :]
    return None


def parse_hf(spec: str) -> HubRef:
    """``owner/repo[@rev]`` followed by nothing, ``:QUANT``, ``:path/file.gguf`` or ``/path/file.gguf``
    (the last form after a prefix only). A tail ending in ``.gguf`` is a file path, any other a quantization.
    """
    match = re.fullmatch(r"([^/@:]+/[^/@:]+)(?:@([^/:]+))?(?:([:/])(.+))?", spec.strip())
    if not match:
        raise ModelNotFoundError(
            f"{spec!r} does not name a Hugging Face repository. Use owner/repo:Q4_K_M, owner/repo:file.gguf "
            "or hf://owner/repo/file.gguf."
        )
    repo, rev, sep, tail = match.groups()
    rev = rev or "main"
    if tail is None:
        return HubQuery(repo, None, rev)
    if tail.endswith(".gguf"):
        return HubFile(repo, tail, rev)
    if sep == ":" and "/" not in tail:
        return HubQuery(repo, tail, rev)
    raise ModelNotFoundError(
        f"{tail!r} in {repo} is not a .gguf file. llama.cpp loads GGUF files: name one from the repository's "
        f"file list (e.g. a *-Q4_K_M.gguf), or a quantization: {repo}:Q4_K_M."
    )


# -- quantizations in a file list ---------------------------------------------------------------
_SPLIT_SUFFIX = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_QUANT_LIKE = re.compile(r"I?Q\d+(?:_[A-Z0-9]+)*|TQ\d+_\d+|[BM]?F(?:16|32|64)|(?:MX|NV)FP4(?:_MOE)?", re.IGNORECASE)


def model_files(names: Iterable[str]) -> list[str]:
    """The GGUF models in a repository listing: ``.gguf`` files other than multimodal projectors
    (``mmproj``), each split model by its first part (``…-00001-of-0000N.gguf``)."""
    found = []
    for name in names:
        base = PurePosixPath(name).name
        if not base.endswith(".gguf") or "mmproj" in base.lower():
            continue
        split = _SPLIT_SUFFIX.search(base)
        if split and int(split.group(1)) != 1:
            continue
        found.append(name)
    return sorted(found)


def _stem(name: str) -> str:
    """The path without ``.gguf`` and without a split suffix."""
    split = _SPLIT_SUFFIX.search(name)
    return name[: split.start()] if split else name[: -len(".gguf")]


def _quant_at(stem: str, quant: str) -> int | None:
    """Where ``quant`` (case-insensitive) stands in ``stem`` as a whole ``-``/``.``/``/``-delimited
    part, counted from the end (0: it ends the name); None if it does not."""
    hits = list(re.finditer(rf"(?:^|(?<=[-./])){re.escape(quant)}(?=[-./]|$)", stem, re.IGNORECASE))
    return len(stem) - hits[-1].end() if hits else None


def quant_label(name: str) -> str:
    """The quantization a file name shows (``Q4_K_M`` for ``…-q4_k_m.gguf``), else the file name."""
    for part in reversed(re.split(r"[-./]", _stem(name))):
        if _QUANT_LIKE.fullmatch(part):
            return part.upper()
    return name


def match_file(names: Iterable[str], quant: str) -> str | None:
    """The model file of ``quant`` among ``names`` (see :func:`model_files`), else None.

    The quantization must be a whole ``-``, ``.`` or ``/`` delimited part of the path, in any case:
    ``Q4_K`` matches ``m-Q4_K.gguf`` but not ``m-Q4_K_M.gguf``; ``Q4_K_M`` matches the folder in
    ``Q4_K_M/m-00001-of-00002.gguf``. Among several: a top-level file first, then one whose name
    ends with it, then the shortest path.

    >>> match_file(["sub/m-Q4_K_M.gguf", "m-Q4_K_M-imat.gguf", "m-Q4_K_M.gguf", "mmproj-Q4_K_M.gguf"], "q4_k_m")
    'm-Q4_K_M.gguf'
    """
    ranked = []
    for name in model_files(names):
        at = _quant_at(_stem(name), quant)
        if at is not None:
            ranked.append((name.count("/"), at > 0, len(name), name))
    return min(ranked)[3] if ranked else None


def select_file(names: Iterable[str], query: HubQuery) -> str:
    """The file ``query`` names in a repository listing.

    With a quantization: :func:`match_file`. Without one: the ``Q4_K_M`` file, else the only model
    in the repository. For a split model, every part must be listed. Raises
    :class:`ModelNotFoundError` listing the quantizations that are there.
    """
    listing = list(names)
    files = model_files(listing)
    where = f"{query.repo}" + ("" if query.revision == "main" else f" at {query.revision}")
    if not files:
        raise ModelNotFoundError(
            f"{where} holds no GGUF model file. llama.cpp loads GGUF files: use a repository that has them "
            "(their names often end in -GGUF)."
        )
    chosen = match_file(files, query.quant or DEFAULT_QUANT)
    if chosen is None and query.quant is None and len(files) == 1:
        chosen = files[0]
    if chosen is None:
        labels = sorted({quant_label(f) for f in files}, key=lambda q: (q.endswith(".gguf"), q))
        example = f"{query.repo}:{labels[0]}"
        wanted = f"no {query.quant} file" if query.quant else f"no {DEFAULT_QUANT} file (the default)"
        raise ModelNotFoundError(
            f"{where} has {wanted}. Quantizations there: {', '.join(labels)}. Name one, e.g. {example}."
        )
    split = _SPLIT_SUFFIX.search(chosen)
    if split:
        count = int(split.group(2))
        parts = (f"{chosen[: split.start()]}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1))
        missing = [p for p in parts if p not in listing]
        if missing:
            raise ModelNotFoundError(
                f"{chosen} in {where} is part 1 of a {count}-part model, but {', '.join(missing)} "
                "is not in the repository."
            )
    return chosen


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


def _token_note() -> str:
    if config.hf_token():
        return f" The token (HF_TOKEN or {config.hf_token_path()}) was not accepted for it."
    return " If it is private, set HF_TOKEN or log in with `hf auth login`."


def _hub_error(resp: Any, ref: HubRef, url: str) -> Exception:
    code = resp.status_code
    kind = resp.headers.get("X-Error-Code", "")
    where = f"{config.hf_endpoint()}/{ref.repo}"
    if kind == "GatedRepo":
        return DownloadError(
            f"{ref.repo} is a gated repository: accept its license at {where} while logged in, then set "
            "HF_TOKEN (or run `hf auth login`) with a read token of that account."
        )
    if kind == "RepoNotFound" or (code == 401 and not kind):
        return ModelNotFoundError(f"Repository {ref.repo} was not found on {config.hf_endpoint()}." + _token_note())
    if kind == "RevisionNotFound":
        return ModelNotFoundError(f"Revision {ref.revision!r} does not exist in {ref.repo}. See {where}/tree/main.")
    if isinstance(ref, HubFile) and (kind == "EntryNotFound" or code == 404):
        return ModelNotFoundError(
            f"File {ref.file!r} is not in {ref.repo} at {ref.revision}. See the file list at "
            f"{where}/tree/{ref.revision}."
        )
    if code in (401, 403):
        return DownloadError(f"{ref.spec}: access denied (HTTP {code}).{_token_note()}")
    return http_error(resp, url, ref.spec)


def list_files(query: HubQuery, sess: requests.Session) -> tuple[list[str], str | None]:
    """Every file path in the repository at ``query.revision``, and the commit it resolved to."""
    url = f"{config.hf_endpoint()}/api/models/{query.repo}/revision/{quote(query.revision, safe='')}"
    resp = request(sess, "GET", url, what=query.spec, accept_errors=True, headers=auth_headers(url))
    with resp:
        if resp.status_code >= 400:
            raise _hub_error(resp, query, url)
        try:
            data = resp.json()
            names = [item["rfilename"] for item in data.get("siblings") or ()]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DownloadError(
                f"{config.hf_endpoint()} sent an unreadable file list for {query.repo} ({exc}). Check HF_ENDPOINT."
            ) from None
    commit = data.get("sha")
    return [n for n in names if isinstance(n, str)], commit if isinstance(commit, str) else None


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
