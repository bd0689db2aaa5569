"""A tiny in-memory Hub-compatible HTTP server on 127.0.0.1 for driving `huggingface_hub` in tests.

It serves the endpoints the client calls to create a repo or branch, commit small files (the
preupload answer is always "regular", so no LFS or Xet upload is needed), read repo info and
tree listings, and resolve files with the headers `hf_hub_download` checks (X-Repo-Commit, ETag,
Content-Length). Errors carry the `X-Error-Code` the client maps to its exceptions. Every request
is logged as `(method, path)`; the server runs in a thread and stops when the `with` block ends.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_sha(content: bytes) -> str:
    """The git object id of a blob, which the client compares with the remote oid of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> {path: content}
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    private: bool = False

    def resolve(self, revision: str) -> Optional[str]:
        return self.branches.get(revision) or (revision if revision in self.commits else None)


class HubServer:
    """The server; use as `with HubServer() as hub:` and point `HfApi(endpoint=hub.url)` at it."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def downloads(self) -> list[str]:
        """The file paths fetched with GET .../resolve/<revision>/<path>."""
        return [unquote(p.split("/resolve/", 1)[1].split("/", 1)[1]) for m, p in self.requests
                if m == "GET" and "/resolve/" in p]

    def commit(self, repo: Repo, branch: str, changes: dict[str, Optional[bytes]]) -> str:
        """Apply `{path: content or None (delete)}` on top of the branch head; return the new commit id."""
        files = dict(repo.commits[repo.branches[branch]]) if branch in repo.branches else {}
        for path, content in changes.items():
            if content is None:
                files = {p: c for p, c in files.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
            else:
                files[path] = content
        sha = hashlib.sha1(f"{len(repo.commits)}:{sorted(files)}:{branch}".encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha


def _handler_for(hub: HubServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            self._method = method
            with hub.lock:
                hub.requests.append((method, url.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
                parts = url.path.strip("/").split("/")
                query = parse_qs(url.query)
                try:
                    self._route(method, parts, body, query)
                except _HubError as error:
                    self._send(error.status, {"error": error.message}, error.headers)

        def _route(self, method: str, parts: list[str], body: bytes, query: dict) -> None:
            if method == "POST" and parts == ["api", "repos", "create"]:
                return self._create_repo(json.loads(body))
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return self._validate_yaml(json.loads(body)["content"])
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4:5], parts[5:]
                repo = self._repo(repo_id)
                if method == "GET" and not action:
                    return self._repo_info(repo_id, repo, "main")
                if method == "GET" and action == ["revision"]:
                    return self._repo_info(repo_id, repo, unquote(rest[0]))
                if method == "GET" and action == ["tree"]:
                    return self._tree(repo, unquote(rest[0]), unquote("/".join(rest[1:])), query)
                if method == "POST" and action == ["preupload"]:
                    return self._preupload(repo, unquote(rest[0]), json.loads(body))
                if method == "POST" and action == ["commit"]:
                    return self._commit(repo_id, repo, unquote(rest[0]), body)
                if method == "POST" and action == ["branch"]:
                    return self._create_branch(repo, unquote(rest[0]), json.loads(body or b"{}"))
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                repo_id = f"{parts[0]}/{parts[1]}"
                return self._resolve(method, self._repo(repo_id), unquote(parts[3]), unquote("/".join(parts[4:])))
            raise _HubError(404, f"No route for {method} {'/'.join(parts)}")

        # -------------------------------------------------------------------------- endpoints
        def _create_repo(self, payload: dict) -> None:
            self._require_token()
            repo_id = f"{payload.get('organization')}/{payload['name']}"
            if repo_id in hub.repos:  # the client reads the url from the 409 answer when exist_ok=True
                return self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
            repo = hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            hub.commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _validate_yaml(self, content: str) -> None:
            """Check the model card's metadata block the way the client expects: YAML mapping, list of tags."""
            head, _, rest = content.partition("---\n")
            metadata = yaml.safe_load(rest.partition("\n---")[0]) if not head and rest else None
            errors = []
            if not isinstance(metadata, dict):
                errors.append({"message": "README.md has no YAML metadata block"})
            elif not isinstance(metadata.get("tags", []), list):
                errors.append({"message": "tags must be a list"})
            self._send(400 if errors else 200, {"errors": errors, "warnings": []})

        def _create_branch(self, repo: Repo, branch: str, payload: dict) -> None:
            self._require_token()
            if branch in repo.branches:
                raise _HubError(409, f"Branch {branch} already exists")
            start = self._commit_of(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start
            self._send(200, {})

        def _repo_info(self, repo_id: str, repo: Repo, revision: str) -> None:
            sha = self._commit_of(repo, revision)
            siblings = [{"rfilename": path} for path in sorted(repo.commits[sha])]
            self._send(200, {"id": repo_id, "sha": sha, "private": repo.private, "siblings": siblings})

        def _tree(self, repo: Repo, revision: str, folder: str, query: dict) -> None:
            files = repo.commits[self._commit_of(repo, revision)]
            prefix = f"{folder}/" if folder else ""
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            entries, folders = [], set()
            for path in sorted(p for p in files if p.startswith(prefix)):
                relative = path[len(prefix):].split("/")
                for depth in range(1, len(relative)):
                    if recursive or depth == 1:
                        folders.add(prefix + "/".join(relative[:depth]))
                if recursive or len(relative) == 1:
                    entries.append({"type": "file", "path": path, "size": len(files[path]),
                                    "oid": git_blob_sha(files[path])})
            if not entries and not folders:
                raise _HubError(404, f"{folder} does not exist", {"X-Error-Code": "EntryNotFound"})
            entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
                        for f in sorted(folders)]
            self._send(200, entries)

        def _preupload(self, repo: Repo, revision: str, payload: dict) -> None:
            self._require_token()
            files = repo.commits[self._commit_of(repo, revision)]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                       "oid": git_blob_sha(files[f["path"]]) if f["path"] in files else None}
                      for f in payload["files"]]
            self._send(200, {"files": answer, "commitOid": repo.resolve(revision)})

        def _commit(self, repo_id: str, repo: Repo, branch: str, body: bytes) -> None:
            self._require_token()
            if branch not in repo.branches:
                raise _HubError(404, f"Invalid rev id: {branch}", {"X-Error-Code": "RevisionNotFound"})
            changes: dict[str, Optional[bytes]] = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "file":
                    changes[value["path"]] = base64.b64decode(value["content"])
                elif key in ("deletedFile", "deletedFolder"):
                    changes[value["path"]] = None
                elif key != "header":
                    raise _HubError(400, f"This test server only takes regular files, got {key!r}")
            sha = hub.commit(repo, branch, changes)
            self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}"})

        def _resolve(self, method: str, repo: Repo, revision: str, path: str) -> None:
            sha = self._commit_of(repo, revision)
            content = repo.commits[sha].get(path)
            if content is None:
                headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
                raise _HubError(404, f"Entry not found: {path}", headers)
            headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha(content)}"',
                       "Content-Type": "application/octet-stream"}
            self._send_bytes(200, content, headers)

        # -------------------------------------------------------------------------- helpers
        def _repo(self, repo_id: str) -> Repo:
            if repo_id not in hub.repos:
                raise _HubError(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
            return hub.repos[repo_id]

        def _commit_of(self, repo: Repo, revision: str) -> str:
            sha = repo.resolve(revision)
            if sha is None:
                raise _HubError(404, f"Invalid rev id: {revision}", {"X-Error-Code": "RevisionNotFound"})
            return sha

        def _require_token(self) -> None:
            if not self.headers.get("authorization", "").startswith("Bearer "):
                raise _HubError(401, "Invalid credentials in Authorization header")

        def _send(self, status: int, payload, headers: Optional[dict] = None) -> None:
            body = json.dumps(payload).encode()
            self._send_bytes(status, body, {"Content-Type": "application/json", **(headers or {})})

        def _send_bytes(self, status: int, body: bytes, headers: dict) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self._method != "HEAD":
                self.wfile.write(body)

    return Handler


class _HubError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
