"""A local Hugging Face hub for tests: model folders on disk, served over HTTP the way the hub
serves them, so that huggingface_hub's own download code runs unchanged (HF_ENDPOINT / endpoint=).

What it answers, as the hub does:
- GET /api/models/{repo}[/revision/{rev}]: the model's info, with the commit the revision is at;
- GET /api/models/{repo}/tree/{rev}[?recursive=true]: the files, with sizes, git blob ids and, for
  weights, Git LFS sha256 and size;
- HEAD/GET /{repo}/resolve/{rev}/{file}: small files directly (ETag = git blob id, X-Repo-Commit);
  LFS files by a redirect to a second host (the "CDN", 127.0.0.2) carrying X-Linked-Etag and
  X-Linked-Size, which serves byte ranges, so interrupted transfers resume;
- errors with the hub's X-Error-Code header: RepoNotFound (also a private repo asked without the granted
  token), RevisionNotFound, EntryNotFound, GatedRepo (a gated repo's information is public, its files
  need the granted token: 401 without a token, 403 with another);
- 401 "Invalid credentials in Authorization header" (no error code) for INVALID_TOKEN, a token the hub
  does not know;
- a hub in trouble: `answer_status` (e.g. 503) answers every request with that status, `stall_s` holds
  every request that long and then drops the connection (a hub that does not answer).
Every request is recorded, so tests can assert what a download did (or that nothing asked).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
GRANTED_TOKEN = "hf_granted_test_token"
INVALID_TOKEN = "hf_invalid_test_token"


@dataclass
class Blob:
    path: Path
    size: int
    git_oid: str
    sha256: str | None  # set for LFS files


@dataclass
class Repo:
    repo_id: str
    commit: str
    refs: set[str]
    files: dict[str, Blob]
    gated: bool = False
    private: bool = False
    advertised_sizes: dict[str, int] = field(default_factory=dict)  # sizes the listing claims instead


@dataclass
class Request:
    host: str
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


def _blob(path: Path) -> Blob:
    data = path.read_bytes()
    git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    lfs = path.suffix in LFS_SUFFIXES
    return Blob(path, len(data), git_oid, hashlib.sha256(data).hexdigest() if lfs else None)


class FakeHub:
    def __init__(self, granted_token: str = GRANTED_TOKEN):
        self.granted_token = granted_token  # the token a gated repo's files need
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.cut_once: dict[str, int] = {}  # LFS sha256 -> bytes to send before dropping the connection
        self.answer_status: int | None = None  # set: every request is answered with this status (e.g. 503)
        self.stall_s = 0.0  # set: every request is held this long, then dropped unanswered
        self._closing = threading.Event()  # releases held requests when the hub stops
        self._servers = [ThreadingHTTPServer((host, 0), self._handler(host)) for host in ("127.0.0.1", "127.0.0.2")]
        for server in self._servers:
            server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._servers[0].server_port}"
        self.cdn_url = f"http://127.0.0.2:{self._servers[1].server_port}"

    def add_repo(
        self,
        repo_id: str,
        folder: Path,
        *,
        refs=("main",),
        gated: bool = False,
        private: bool = False,
        advertised_sizes: dict[str, int] | None = None,
    ) -> str:
        """Serve `folder` as `repo_id` at a commit of its own (returned), reachable by each of `refs`."""
        files = {str(p.relative_to(folder)): _blob(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(repo_id.encode() + "".join(b.git_oid for b in files.values()).encode()).hexdigest()
        self.repos[repo_id] = Repo(repo_id, commit, set(refs), files, gated, private, dict(advertised_sizes or {}))
        return commit

    def cut_transfer_once(self, repo_id: str, filename: str, after_bytes: int) -> None:
        self.cut_once[self.repos[repo_id].files[filename].sha256] = after_bytes

    def requests_to(self, pattern: str) -> list[Request]:
        return [r for r in self.requests if re.search(pattern, r.path)]

    def __enter__(self) -> FakeHub:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    # --- the HTTP side ---

    def _handler(self, host: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                hub._serve(self, host, body=False)

            def do_GET(self):
                hub._serve(self, host, body=True)

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler, host: str, body: bool) -> None:
        self.requests.append(Request(host, h.command, h.path, {k.lower(): v for k, v in h.headers.items()}))
        url = urlparse(h.path)
        path = unquote(url.path)
        if host == "127.0.0.2":
            return self._serve_lfs(h, path, body)
        if self.stall_s:
            self._closing.wait(self.stall_s)
            h.close_connection = True  # no answer at all
            return
        if self.answer_status:
            return self._error(h, self.answer_status, None, "The hub is having trouble")
        if h.headers.get("Authorization") == f"Bearer {INVALID_TOKEN}":
            return self._error(h, 401, None, "Invalid credentials in Authorization header")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self._info(h, m[1], m[2] or "main")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() in ("true", "1")
            return self._tree(h, m[1], m[2], m[3] or "", recursive)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(h, m[1], m[2], m[3], body)
        self._error(h, 404, None, "Not found")

    def _error(self, h, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        data = json.dumps({"error": message}).encode()
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _repo_at(self, h, repo_id: str, revision: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        granted = h.headers.get("Authorization") == f"Bearer {self.granted_token}"
        if repo is None or (repo.private and not granted):  # the hub does not say which
            self._error(h, 401, "RepoNotFound", "Repository not found")
            return None
        if revision not in repo.refs and revision != repo.commit:
            self._error(h, 404, "RevisionNotFound", "Invalid rev id: " + revision)
            return None
        return repo

    def _json(self, h, data) -> None:
        raw = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    def _info(self, h, repo_id: str, revision: str) -> None:
        if repo := self._repo_at(h, repo_id, revision):
            self._json(
                h,
                {
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": repo.commit,
                    "private": repo.private,
                    "gated": "auto" if repo.gated else False,
                    "disabled": False,
                    "siblings": [{"rfilename": name} for name in repo.files],
                },
            )

    def _tree(self, h, repo_id: str, revision: str, under: str, recursive: bool) -> None:
        if not (repo := self._repo_at(h, repo_id, revision)):
            return
        prefix = f"{under}/" if under else ""
        entries, folders = [], set()
        for name, blob in repo.files.items():
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            size = repo.advertised_sizes.get(name, blob.size)
            entry = {"type": "file", "oid": blob.git_oid, "size": size, "path": name}
            if blob.sha256:
                entry["lfs"] = {"oid": blob.sha256, "size": size, "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        self._json(h, entries)

    def _resolve(self, h, repo_id: str, revision: str, name: str, body: bool) -> None:
        if not (repo := self._repo_at(h, repo_id, revision)):
            return
        if repo.gated and h.headers.get("Authorization") != f"Bearer {self.granted_token}":
            return self._error(
                h,
                401 if "Authorization" not in h.headers else 403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it.",
            )
        blob = repo.files.get(name)
        if blob is None:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist", commit=repo.commit)
        if blob.sha256:  # LFS: the hub redirects to its CDN
            h.send_response(302)
            h.send_header("Location", f"{self.cdn_url}/lfs/{blob.sha256}")
            h.send_header("X-Repo-Commit", repo.commit)
            h.send_header("X-Linked-Etag", f'"{blob.sha256}"')
            h.send_header("X-Linked-Size", str(blob.size))
            h.send_header("ETag", f'"{blob.git_oid}"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        self._send_file(h, blob, blob.git_oid, body, commit=repo.commit)

    def _serve_lfs(self, h, path: str, body: bool) -> None:
        sha = path.removeprefix("/lfs/")
        blob = next((b for r in self.repos.values() for b in r.files.values() if b.sha256 == sha), None)
        if blob is None:
            return self._error(h, 404, None, "No such object")
        self._send_file(h, blob, sha, body)

    def _send_file(self, h, blob: Blob, etag: str, body: bool, commit: str | None = None) -> None:
        data = blob.path.read_bytes()
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", "")):
            start = int(m[1])
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{etag}"')
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.end_headers()
        if not body:
            return
        cut = self.cut_once.pop(etag, None) if blob.sha256 else None
        h.wfile.write(data[start : start + cut] if cut is not None else data[start:])
        if cut is not None:
            h.close_connection = True  # the client sees a body shorter than Content-Length
