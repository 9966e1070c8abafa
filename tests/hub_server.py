"""A real loopback HTTP server that behaves like the Hugging Face hub and a PyPI simple index.

* ``GET /api/models/{owner}/{repo}/revision/{rev}``: the repository's commit and file list
  (``siblings``), as huggingface.co answers it.
* ``HEAD/GET /{owner}/{repo}/resolve/{rev}/{path}``: for LFS files a 302 to the CDN with
  ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, like huggingface.co; small non-LFS files
  are served directly with a git-style ``ETag``. Unknown repos/revisions/files and gated repos
  answer with the hub's status codes and ``X-Error-Code`` headers. A private repository answers
  as if it did not exist unless the request carries ``Authorization: Bearer <token>``; a gated one
  lists its files to anyone but serves them only with the token.
* ``GET /cdn/{sha256}``: the bytes, with ``Range`` support. The CDN is addressed as
  ``localhost`` while the hub is ``127.0.0.1``, so (as on the real hub) they are different hosts.
* ``GET /simple/{project}/`` (PEP 691 JSON or PEP 503 HTML) and ``GET /packages/{file}``.

Faults are queued per file (CDN blob sha256 or wheel filename) and used up one per request:
``drop`` (close the connection after N body bytes), ``status`` (answer 429/5xx, optionally with
``Retry-After``), ``corrupt`` (flip a byte); ``no_range`` and ``slow`` are sticky per file.
Every request is logged in ``server.log`` as ``(method, path, headers)``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubEntry:
    data: bytes
    lfs: bool = True

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Repo:
    files: dict[tuple[str, str], HubEntry] = field(default_factory=dict)  # (revision, path) -> entry
    gated: bool = False
    private: bool = False
    renamed_to: str | None = None


class FakeHub:
    """``with FakeHub() as hub:`` serves on 127.0.0.1; ``hub.endpoint`` for HF_ENDPOINT."""

    def __init__(self, token: str = "hf_test_token") -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.packages: dict[str, bytes] = {}  # wheel filename -> bytes
        self.projects: dict[str, list[dict[str, Any]]] = {}  # normalized project -> file records
        self.index_format = "json"
        self.faults: dict[str, list[dict[str, Any]]] = {}
        self.sticky: dict[str, set[str]] = {}
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self):  # -> Self (typing.Self needs Python 3.11)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn(self) -> str:
        return f"http://localhost:{self.port}/cdn"

    @property
    def index(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple"

    # -- content ---------------------------------------------------------------------------------
    def add_file(
        self,
        repo: str,
        path: str,
        data: bytes,
        *,
        revision: str = "main",
        lfs: bool = True,
        gated: bool = False,
        private: bool = False,
    ) -> str:
        entry = HubEntry(data, lfs)
        r = self.repos.setdefault(repo, Repo())
        r.gated = r.gated or gated
        r.private = r.private or private
        r.files[(revision, path)] = entry
        self.blobs[entry.sha256] = data
        return entry.sha256

    def rename_repo(self, old: str, new: str) -> None:
        self.repos[old] = Repo(renamed_to=new)

    def add_wheel(
        self,
        project: str,
        version: str,
        members: dict[str, bytes],
        *,
        sha256: str | None = None,
        record_override: dict[str, str] | None = None,
        yanked: bool | str = False,
    ) -> str:
        """Serve a wheel holding ``members``; ``sha256`` overrides the hash the index lists; ``yanked``
        (True or a reason) marks it yanked (PEP 592/691)."""
        filename, data = build_wheel(project, version, members, record_override=record_override)
        self.packages[filename] = data
        digest = sha256 or hashlib.sha256(data).hexdigest()
        norm = re.sub(r"[-_.]+", "-", project).lower()
        self.projects.setdefault(norm, []).append(
            {
                "filename": filename,
                "url": f"../../packages/{filename}",
                "hashes": {"sha256": digest},
                "size": len(data),
                "requires-python": ">=3.9",
                "yanked": yanked,
            }
        )
        return filename

    # -- faults ----------------------------------------------------------------------------------
    def fault(self, key: str, kind: str, **params: Any) -> None:
        """Queue a one-shot fault for the next request of ``key`` (blob sha256 or wheel filename)."""
        self.faults.setdefault(key, []).append({"kind": kind, **params})

    def set_sticky(self, key: str, *flags: str) -> None:
        self.sticky.setdefault(key, set()).update(flags)

    def requests_for(self, fragment: str, method: str | None = None) -> list[tuple[str, str, dict[str, str]]]:
        with self._lock:
            return [r for r in self.log if fragment in r[1] and (method is None or r[0] == method)]

    def _take_fault(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            queue = self.faults.get(key)
            return queue.pop(0) if queue else None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        # -- routing -----------------------------------------------------------------------------
        def _route(self, head: bool) -> None:
            with hub._lock:
                hub.log.append((self.command, self.path, dict(self.headers)))
            path = self.path.split("?", 1)[0]
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
            if m:
                return self._revision(m.group(1), unquote(m.group(2)))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._resolve(m.group(1), m.group(2), m.group(3), head)
            m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
            if m and m.group(1) in hub.blobs:
                return self._serve_bytes(m.group(1), hub.blobs[m.group(1)], head, etag=f'"{m.group(1)}"')
            m = re.fullmatch(r"/simple/([^/]+)/", path)
            if m:
                return self._simple(m.group(1))
            m = re.fullmatch(r"/packages/([^/]+)", path)
            if m and m.group(1) in hub.packages:
                return self._serve_bytes(m.group(1), hub.packages[m.group(1)], head, etag=None)
            self._reply(404, b"not found", {"X-Error-Code": "EntryNotFound"})

        def _reply(
            self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
        ) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _revision(self, repo_id: str, rev: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                return self._reply(401, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            if repo.renamed_to:
                return self._reply(307, b"", {"Location": f"/api/models/{repo.renamed_to}/revision/{rev}"})
            files = [path for r, path in repo.files if r == rev]
            if not files:
                return self._reply(404, b'{"error":"Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
            body = json.dumps(
                {
                    "id": repo_id,
                    "sha": COMMIT,
                    "private": repo.private,
                    "gated": repo.gated,
                    "siblings": [{"rfilename": path} for path in sorted(files)],
                }
            ).encode()
            return self._reply(200, body, {"Content-Type": "application/json"})

        def _resolve(self, repo_id: str, rev: str, file: str, head: bool) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                return self._reply(401, b"Repository not found", {"X-Error-Code": "RepoNotFound"}, head)
            if repo.renamed_to:
                return self._reply(307, b"", {"Location": f"/{repo.renamed_to}/resolve/{rev}/{file}"}, head)
            if repo.gated and not self._authorized():
                return self._reply(403, b"gated", {"X-Error-Code": "GatedRepo"}, head)
            if not any(r == rev for r, _ in repo.files):
                return self._reply(404, b"Invalid rev id", {"X-Error-Code": "RevisionNotFound"}, head)
            entry = repo.files.get((rev, file))
            if entry is None:
                return self._reply(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, head)
            common = {"X-Repo-Commit": COMMIT}
            if entry.lfs:
                common.update(
                    {
                        "Location": f"{hub.cdn}/{entry.sha256}?X-Amz-Signature=abc",
                        "X-Linked-Etag": f'"{entry.sha256}"',
                        "X-Linked-Size": str(len(entry.data)),
                        "ETag": '"' + hashlib.sha1(entry.data).hexdigest() + '"',
                    }
                )
                return self._reply(302, b"", common, head)
            git_etag = '"' + hashlib.sha1(b"blob %d\0" % len(entry.data) + entry.data).hexdigest() + '"'
            return self._serve_bytes(entry.sha256, entry.data, head, etag=git_etag, extra=common)

        def _simple(self, project: str) -> None:
            files = hub.projects.get(project)
            if files is None:
                return self._reply(404, b"Not Found")
            if hub.index_format == "json":
                body = json.dumps(
                    {
                        "meta": {"api-version": "1.1"},
                        "name": project,
                        "files": files,
                        "versions": sorted({f["filename"].split("-")[1] for f in files}),
                    }
                ).encode()
                return self._reply(200, body, {"Content-Type": "application/vnd.pypi.simple.v1+json"})

            def yanked(f: dict[str, Any]) -> str:
                reason = f["yanked"]
                if reason is False:
                    return ""
                return f' data-yanked="{reason if isinstance(reason, str) else ""}"'

            links = "".join(
                f'<a href="{f["url"]}#sha256={f["hashes"]["sha256"]}"{yanked(f)}>{f["filename"]}</a><br/>'
                for f in files
            )
            return self._reply(200, f"<html><body>{links}</body></html>".encode(), {"Content-Type": "text/html"})

        # -- bytes with Range and faults ---------------------------------------------------------
        def _serve_bytes(
            self, key: str, data: bytes, head: bool, etag: str | None, extra: dict[str, str] | None = None
        ) -> None:
            fault = None if head else hub._take_fault(key)
            if fault and fault["kind"] == "status":
                headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
                return self._reply(fault["code"], b"try later", headers)
            sticky = hub.sticky.get(key, set())
            start = 0
            rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if_range = self.headers.get("If-Range")
            use_range = rng and "no_range" not in sticky and (if_range is None or if_range == etag)
            if use_range and int(rng.group(1)) >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            if use_range:
                start = int(rng.group(1))
            body = data[start:]
            if fault and fault["kind"] == "corrupt":
                pos = fault.get("at", len(body) // 2)
                body = body[:pos] + bytes([body[pos] ^ 0xFF]) + body[pos + 1 :]
            self.send_response(206 if use_range else 200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "none" if "no_range" in sticky else "bytes")
            if use_range:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if etag:
                self.send_header("ETag", etag)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return
            limit = fault["after"] if fault and fault["kind"] == "drop" else len(body)
            step = 64 * 1024
            for i in range(0, min(limit, len(body)), step):
                self.wfile.write(body[i : min(i + step, limit)])
                if "slow" in sticky:
                    time.sleep(0.02)
            if limit < len(body):  # drop the connection mid-file
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    return Handler


def build_wheel(
    project: str, version: str, members: dict[str, bytes], record_override: dict[str, str] | None = None
) -> tuple[str, bytes]:
    """A minimal, valid ``py3-none-any`` wheel holding ``members`` (with METADATA, WHEEL, RECORD)."""
    stem = re.sub(r"[-_.]+", "_", project).lower()
    dist = f"{stem}-{version}.dist-info"
    files = dict(members)
    files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: llcuda-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    rows = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={(record_override or {}).get(name, digest)},{len(data)}")
    rows.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(rows) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return f"{stem}-{version}-py3-none-any.whl", buf.getvalue()


def make_gguf(
    path: Path,
    *,
    arch: str = "llama",
    tensor_bytes: int = 3 << 20,
    chat_template: str | None = None,
    general_type: str | None = None,
    extra_kv: dict[str, Any] | None = None,
    n_tensors: int = 2,
    seed: int = 0,
    split: bool = False,
) -> Path:
    """Write a small but complete GGUF with the reference writer (gguf-py): F32 tensors of
    ~``tensor_bytes`` in all, whose bytes depend on ``seed``. ``split``: one file per tensor,
    named like llama.cpp's gguf-split does; returns the first part."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch, split_max_tensors=1 if split else 0)
    writer.add_name(f"test-{arch}")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_file_type(0)
    if general_type:
        writer.add_type(general_type)
    if chat_template:
        writer.add_chat_template(chat_template)
    writer.add_token_list(["<s>", "</s>", "a", "b"])
    for key, value in (extra_kv or {}).items():
        writer.add_string(key, value)
    rng = np.random.default_rng(seed)
    per = max(tensor_bytes // (4 * 64 * max(n_tensors, 1)), 1)
    for i in range(n_tensors):
        writer.add_tensor(f"blk.{i}.weight", rng.standard_normal((per, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.with_name(f"{path.stem}-00001-of-{n_tensors:05d}.gguf") if split else path


def iter_chunks(data: bytes, n: int) -> Iterator[bytes]:
    size = -(-len(data) // n)
    for i in range(0, len(data), size):
        yield data[i : i + size]
