"""Resumable, verified HTTP downloads (``requests`` is imported lazily, on first use).

:func:`fetch` streams a URL into ``<dest>.<key>.incomplete``, resumes it with ``Range`` (and
``If-Range``, so a changed file is never spliced onto old bytes), starts over when the server
answers 200 to a range request, retries transient failures (connection errors, timeouts,
408/429/5xx) with capped exponential backoff and jitter, then checks the size and sha256 and
renames the file into place atomically. The caller holds the lock on ``dest``
(:func:`llcuda.models.cache.file_lock`), so no two processes write the same file.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urljoin, urlsplit

from llcuda import config
from llcuda.errors import ChecksumError, DownloadError, ModelNotFoundError
from llcuda.models.progress import Progress

if TYPE_CHECKING:
    import requests

log = logging.getLogger("llcuda.models")

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
MAX_RETRIES = 5  # consecutive failed attempts that made no progress
MAX_ATTEMPTS = 100  # in all, so a server that keeps dropping cannot loop forever
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 60.0
CHUNK_BYTES = 128 << 10  # small reads: a dropped connection loses at most this much
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def session() -> requests.Session:
    """A requests session with llcuda's User-Agent and no transparent compression."""
    from importlib.metadata import PackageNotFoundError, version

    import requests

    try:
        ua = f"llcuda/{version('llcuda')}"
    except PackageNotFoundError:  # running from a source tree
        ua = "llcuda"
    sess = requests.Session()
    sess.headers["User-Agent"] = ua
    sess.headers["Accept-Encoding"] = "identity"  # byte counts and ranges must be of the file itself
    sess.hooks["response"].append(_refuse_insecure_redirect)
    return sess


def check_url(url: str) -> None:
    """Refuse to fetch anything but HTTPS, except plain HTTP to loopback or to a mirror the user set
    explicitly (``HF_ENDPOINT``, ``LLCUDA_PYPI_INDEX``/``PIP_INDEX_URL``; the defaults are HTTPS)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http":
        host = (parts.hostname or "").lower()
        mirrors = {urlsplit(config.hf_endpoint()).netloc.lower(), urlsplit(config.pypi_index()).netloc.lower()}
        if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.") or parts.netloc.lower() in mirrors:
            return
    raise DownloadError(
        f"Refusing to download {url}: models are fetched over HTTPS only. Use an https:// URL; plain HTTP is "
        "allowed only for loopback and for a mirror set explicitly in HF_ENDPOINT or LLCUDA_PYPI_INDEX."
    )


def _refuse_insecure_redirect(resp: Any, *args: Any, **kwargs: Any) -> Any:
    """A requests response hook: never follow a redirect from HTTPS to plain HTTP (or another scheme)."""
    if resp.is_redirect:
        try:
            check_url(urljoin(resp.url, resp.headers["Location"]))
        except DownloadError:
            resp.close()
            raise
    return resp


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def normalize_etag(raw: str | None) -> str | None:
    if not raw:
        return None
    value = raw.strip()
    value = value.removeprefix("W/")
    return value.strip('"') or None


def etag_sha256(raw: str | None) -> str | None:
    """The sha256 a hub ETag carries for LFS files (64 hex digits), else None."""
    value = normalize_etag(raw)
    return value.lower() if value and _SHA256_RE.match(value.lower()) else None


def redact(url: str) -> str:
    """``url`` for messages: no ``user:password@``, no query string (signatures, tokens)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc, query="", fragment="").geturl() if parts.scheme else url


def _host(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1] or url


class _Retry(Exception):
    def __init__(self, reason: str, *, progressed: bool = False, delay: float | None = None) -> None:
        super().__init__(reason)
        self.progressed = progressed
        self.delay = delay


def _retry_after(resp: Any) -> float | None:
    raw = resp.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        delay = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        if parsed is None:
            return None
        delay = parsed.timestamp() - time.time()
    return min(max(delay, 0.0), RETRY_AFTER_MAX_S)


_PERMANENT = (
    "NameResolutionError",
    "Failed to resolve",
    "Name or service not known",
    "nodename nor servname",
    "Network is unreachable",
    "No route to host",
)


def is_permanent(exc: BaseException) -> bool:
    """A connection error that retrying within seconds will not fix (no DNS, no route: no internet)."""
    return any(marker in str(exc) for marker in _PERMANENT)


def backoff_delay(failures: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(failures - 1, 0)) * random.uniform(0.5, 1.0)


def http_error(resp: Any, url: str, what: str) -> Exception:
    """The llcuda error for a non-retryable HTTP answer; ``what`` names the thing requested."""
    code = resp.status_code
    if code == 404:
        return ModelNotFoundError(
            f"{what} was not found ({redact(url)} answered HTTP 404). Check the name and spelling."
        )
    if code in (401, 403):
        return DownloadError(
            f"{what}: access denied ({_host(url)} answered HTTP {code}). If it is gated or private, accept its "
            "license on the website and set HF_TOKEN to a token that may read it."
        )
    return DownloadError(f"{what}: {redact(url)} answered HTTP {code} {resp.reason or ''}".rstrip() + ".")


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", value or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _get_into(
    sess: requests.Session,
    url: str,
    part: Path,
    headers: Mapping[str, str],
    etag: str | None,
    bar: Progress,
    what: str,
) -> int | None:
    """One GET attempt appended to ``part``; returns the full size the server announced."""
    import requests

    offset = part.stat().st_size if part.exists() else 0
    req = dict(headers)
    if offset:
        req["Range"] = f"bytes={offset}-"
        if etag and not etag.startswith("W/"):
            req["If-Range"] = etag
    try:
        resp = sess.get(url, headers=req, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retry(f"{type(exc).__name__}: {exc}") from None
    with resp:
        code = resp.status_code
        if code in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {code}", delay=_retry_after(resp))
        if code == 416:  # our range is past the end: the remote file changed or the part is bad
            part.unlink(missing_ok=True)
            raise _Retry("HTTP 416 for the resume range; starting over", delay=0)
        if code >= 400:
            raise http_error(resp, url, what)
        if code == 206:
            rng = _content_range(resp.headers.get("Content-Range"))
            if rng is None or rng[0] != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server sent range {resp.headers.get('Content-Range')!r} for offset {offset}", delay=0)
            total, mode = rng[1], "ab"
        elif code == 200:
            if offset:
                log.info("%s ignored the resume range; downloading %s from the start", _host(url), what)
            length = resp.headers.get("Content-Length")
            total, mode, offset = (int(length) if length and length.isdigit() else None), "wb", 0
        else:
            raise DownloadError(f"{what}: {redact(url)} answered HTTP {code}, which is not a file. Check the URL.")
        bar.reset(offset, total)
        written = 0
        try:
            with part.open(mode) as fh:
                try:
                    for block in resp.iter_content(CHUNK_BYTES):
                        fh.write(block)
                        written += len(block)
                        bar.update(len(block))
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                    raise _Retry(f"{type(exc).__name__}: {exc}", progressed=written > 0) from None
                finally:
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise DownloadError(
                f"Could not write {part} ({exc.strerror or exc}). Check that the folder is writable and has "
                "space, or point LLCUDA_HOME elsewhere."
            ) from None
        return total


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    etag: str | None = None,
    headers: Mapping[str, str] | None = None,
    what: str | None = None,
    progress: bool | None = None,
    sess: requests.Session | None = None,
    check: Callable[[Path], object] | None = None,
) -> Fetched:
    """Download ``url`` to ``dest`` (caller holds its lock); verify, then rename atomically.

    ``sha256``/``size``: expected values (None: not checked; the size the server announces is
    still enforced). ``etag``: sent as ``If-Range`` when resuming. ``check(path)`` runs on the
    complete, verified file before the rename (e.g. GGUF validation); if it raises, the file is
    deleted and the error propagates. Raises :class:`DownloadError`, :class:`ChecksumError` or
    :class:`ModelNotFoundError`.
    """
    what = what or dest.name
    check_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    key = (sha256 or hashlib.sha1(f"{url} {etag or ''}".encode()).hexdigest())[:16]
    part = dest.with_name(f"{dest.name}.{key}.incomplete")
    sess = sess or session()
    bar = Progress(what, size, progress)
    failures = attempts = 0
    fresh_retry_done = False
    try:
        while True:
            attempts += 1
            have = part.stat().st_size if part.exists() else 0
            resumed = have > 0
            if size is not None and have > size:
                part.unlink()
                have = 0
            total = size
            if size is None or have < size:
                try:
                    announced = _get_into(sess, url, part, headers or {}, etag, bar, what)
                except _Retry as retry:
                    failures = 0 if retry.progressed else failures + 1
                    if failures > MAX_RETRIES or attempts >= MAX_ATTEMPTS:
                        kept = f" The partial file {part} is kept: run again to resume." if part.exists() else ""
                        raise DownloadError(
                            f"Downloading {what} from {_host(url)} failed after {attempts} attempts "
                            f"(last: {retry}). Check your connection or try again later.{kept}"
                        ) from None
                    delay = 0.0 if retry.progressed else retry.delay
                    delay = backoff_delay(failures) if delay is None else delay
                    log.info("%s: %s; retrying in %.1fs", what, retry, delay)
                    time.sleep(delay)
                    continue
                if size is not None and announced is not None and announced != size:
                    part.unlink(missing_ok=True)
                    raise ChecksumError(
                        f"{what}: the server's file has {announced} bytes but {size} were expected. The upstream "
                        "file changed or the mirror is wrong; nothing was kept."
                    )
                total = announced if size is None else size
            got = part.stat().st_size if part.exists() else 0
            if total is not None and got < total:  # the server closed early without an error
                failures += 1
                if failures > MAX_RETRIES:
                    raise DownloadError(f"{what}: the server keeps ending the transfer early at {got}/{total} bytes.")
                time.sleep(backoff_delay(failures))
                continue
            digest = sha256_file(part)
            bad = (total is not None and got != total) or (sha256 is not None and digest != sha256)
            if bad:
                part.unlink(missing_ok=True)
                if resumed and not fresh_retry_done:  # maybe bad bytes came from splicing: one clean try
                    fresh_retry_done = True
                    log.info("%s: checksum mismatch after a resume; downloading once more from the start", what)
                    continue
                raise ChecksumError(
                    f"{what} from {_host(url)} is corrupt: got {got} bytes with sha256 {digest}, expected "
                    f"{total if total is not None else 'any size'} bytes with sha256 {sha256 or 'any'}. "
                    "The file was deleted; try again, or use another mirror (HF_ENDPOINT / LLCUDA_PYPI_INDEX)."
                )
            if check is not None:
                try:
                    check(part)
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
            os.replace(part, dest)
            _fsync_dir(dest.parent)
            return Fetched(dest, digest, got)
    finally:
        bar.close()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def request(
    sess: requests.Session, method: str, url: str, *, what: str, accept_errors: bool = False, **kwargs: Any
) -> requests.Response:
    """One small request (metadata, index pages) with the same retry policy as :func:`fetch`.

    Returns the response for any status below 400 (or any at all with ``accept_errors``) and
    raises the mapped llcuda error otherwise.
    """
    import requests

    check_url(url)
    kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    failures = 0
    while True:
        try:
            resp = sess.request(method, url, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            failures += 1
            if failures > MAX_RETRIES or is_permanent(exc):
                reason = "cannot resolve the host name" if "resolve" in str(exc) else type(exc).__name__
                raise DownloadError(
                    f"Could not reach {_host(url)} for {what} ({reason}). Check your internet connection "
                    "or proxy, use a mirror (HF_ENDPOINT, LLCUDA_PYPI_INDEX), or work offline (LLCUDA_OFFLINE=1) "
                    "with models already in the cache."
                ) from None
            time.sleep(backoff_delay(failures))
            continue
        if resp.status_code in RETRYABLE_STATUS and failures < MAX_RETRIES:
            failures += 1
            delay = _retry_after(resp)
            resp.close()
            time.sleep(backoff_delay(failures) if delay is None else delay)
            continue
        if resp.status_code >= 400 and not accept_errors:
            err = http_error(resp, url, what)
            resp.close()
            raise err
        return resp
