"""A small in-memory server that speaks the Hugging Face Hub's HTTP protocol, for tests.

It lets the real clients (huggingface_hub, transformers' ``push_to_hub`` / ``from_pretrained``,
datasets' ``push_to_hub`` / ``load_dataset``) run their upload and download code against
127.0.0.1 instead of huggingface.co. Stdlib only: ``http.server.ThreadingHTTPServer``.

What it implements (the routes the clients use, found by running them):

- ``GET  /api/whoami-v2``
- ``POST /api/repos/create``, ``DELETE /api/repos/delete``
- ``GET  /api/{models,datasets,spaces}/{org}/{name}[/revision/{rev}]`` (repo info)
- ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``, ``POST .../paths-info/{rev}``
- ``POST /api/{type}s/{repo}/preupload/{rev}``, ``POST .../commit/{rev}`` (NDJSON)
- ``GET  /api/{type}s/{repo}/commits/{rev}``, ``GET .../refs``
- ``POST|DELETE /api/{type}s/{repo}/branch/{name}``, ``POST .../tag/{rev}``, ``DELETE .../tag/{name}``
- ``POST /{prefix}{repo}.git/info/lfs/objects/batch`` and ``PUT /lfs-upload/{sha256}``
- ``HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}`` (with ``Range``)

Errors carry the ``X-Error-Code`` header the clients map to exceptions (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``). LFS files (the Hub's usual binary suffixes, among them
``.safetensors`` and ``.parquet``, and anything of 10 MiB or more) are uploaded through the LFS
batch protocol, as on the Hub. Everything lives in memory for the server's lifetime.

Usage::

    with HubServer() as hub:            # binds 127.0.0.1 on a free port and serves in a thread
        os.environ["HF_ENDPOINT"] = hub.endpoint   # before huggingface_hub is imported
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKEN = "hf_hyperrep_test_token"
DEFAULT_USER = "hyperrep-tester"
DEFAULT_ORG = "hyperrep-org"

# Files the Hub stores with LFS whatever their size (a subset of its default .gitattributes).
LFS_SUFFIXES = (
    ".safetensors", ".parquet", ".arrow", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx",
    ".msgpack", ".npy", ".npz", ".pkl", ".pickle", ".gz", ".zip", ".tar", ".zst",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


def is_lfs_path(path: str, size: int) -> bool:
    """Whether the Hub would store ``path`` (of ``size`` bytes) with LFS."""
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


def git_blob_oid(content: bytes) -> str:
    """The git object id (sha1) of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubError(Exception):
    """An error answer: HTTP status, X-Error-Code (may be empty) and a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class FileRef:
    """One file of a commit: content ``blobs[sha256]``; ``git_oid`` is what git would name it."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, FileRef]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """The commit a branch, tag or commit id names; 404 RevisionNotFound otherwise."""
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and revision.startswith("refs/heads/"):
            oid = self.branches.get(revision[len("refs/heads/"):])
        if oid is None and _COMMIT_HASH.match(revision) and revision in self.commits:
            oid = revision
        if oid is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return self.commits[oid]

    def history(self, commit: Commit) -> list[Commit]:
        """``commit`` and its ancestors, newest first."""
        out = [commit]
        while out[-1].parent is not None:
            out.append(self.commits[out[-1].parent])
        return out


class HubStore:
    """Repos, commits and the content-addressed blob store; every method is thread-safe."""

    def __init__(self, user: str = DEFAULT_USER, orgs: tuple[str, ...] = (DEFAULT_ORG,)):
        self.user, self.orgs = user, orgs
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 hex -> content
        self.lock = threading.RLock()

    # -- blobs -------------------------------------------------------------------------------
    def put_blob(self, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        with self.lock:
            self.blobs.setdefault(sha, content)
        return sha

    def file_ref(self, content: bytes, lfs: bool) -> FileRef:
        """Store ``content``; for LFS files git hashes the pointer, not the content."""
        sha = self.put_blob(content)
        git_oid = git_blob_oid(lfs_pointer(sha, len(content)) if lfs else content)
        return FileRef(sha, len(content), lfs, git_oid)

    # -- repos -------------------------------------------------------------------------------
    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for {repo_type} {repo_id}")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, "", f"You already created this {repo_type} repo: {repo_id}")
            repo = Repo(repo_type, repo_id, private, _now())
            self.repos[(repo_type, repo_id)] = repo
            attrs = self.file_ref(GITATTRIBUTES.encode(), lfs=False)
            self._add_commit(repo, "main", None, "initial commit", "", {".gitattributes": attrs})
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.get_repo(repo_type, repo_id)
            del self.repos[(repo_type, repo_id)]

    def _add_commit(self, repo, branch, parent, title, message, files) -> Commit:
        oid = hashlib.sha1(f"{repo.repo_id}\n{parent}\n{uuid.uuid4()}".encode()).hexdigest()
        commit = Commit(oid, parent, title, message, _now(), files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def commit(self, repo: Repo, branch: str, header: dict, operations: list[dict]) -> Commit:
        """Apply NDJSON commit operations to ``branch``; returns the new commit."""
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            head = repo.commits[repo.branches[branch]]
            parent = header.get("parentCommit")
            if parent is not None and parent != head.oid:
                raise HubError(412, "", "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for op in operations:
                key, value = op.get("key"), op.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    content = base64.b64decode(value["content"])
                    if len(content) >= LFS_MIN_SIZE:
                        raise HubError(400, "", f"{path}: files of 10 MiB or more must use LFS")
                    files[path] = self.file_ref(content, lfs=False)
                elif key == "lfsFile":
                    sha = value["oid"]
                    if sha not in self.blobs:
                        raise HubError(422, "", f"{path}: LFS object {sha} was not uploaded")
                    files[path] = self.file_ref(self.blobs[sha], lfs=True)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, "EntryNotFound", f"{path} does not exist in {branch}")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    gone = [p for p in files if p.startswith(prefix)]
                    if not gone:
                        raise HubError(404, "EntryNotFound", f"{path} does not exist in {branch}")
                    for p in gone:
                        del files[p]
                else:
                    raise HubError(400, "", f"Unsupported commit operation key: {key!r}")
            title = header.get("summary") or "Upload files"
            return self._add_commit(repo, branch, head.oid, title, header.get("description", ""), files)


def _tree_oid(entries: list[tuple[str, str]]) -> str:
    return hashlib.sha1(repr(sorted(entries)).encode()).hexdigest()


def last_change(repo: Repo, commit: Commit, path: str) -> Commit:
    """The newest commit (from ``commit`` back) that changed the file or folder ``path``."""
    def state(files):
        prefix = path + "/"
        return files.get(path), sorted((p, f) for p, f in files.items() if p.startswith(prefix))

    current, value = commit, state(commit.files)
    while current.parent is not None:
        parent = repo.commits[current.parent]
        if state(parent.files) != value:
            break
        current = parent
    return current


def _last_commit_json(commit: Commit) -> dict:
    return {"id": commit.oid, "title": commit.title, "date": commit.date}


def file_info(path: str, ref: FileRef, last: Commit | None = None) -> dict:
    """The Hub's JSON for one file (tree / paths-info); ``last``: its last change, if expanded."""
    info = {"type": "file", "oid": ref.git_oid, "size": ref.size, "path": path}
    if ref.lfs:
        pointer_size = len(lfs_pointer(ref.sha256, ref.size))
        info["lfs"] = {"oid": ref.sha256, "size": ref.size, "pointerSize": pointer_size}
    if last is not None:
        info["lastCommit"] = _last_commit_json(last)
    return info


def folder_info(path: str, files: dict[str, FileRef], last: Commit | None = None) -> dict:
    prefix = path + "/"
    inside = [(p, f.git_oid) for p, f in files.items() if p.startswith(prefix)]
    info = {"type": "directory", "oid": _tree_oid(inside), "size": 0, "path": path}
    if last is not None:
        info["lastCommit"] = _last_commit_json(last)
    return info


def list_tree(files: dict[str, FileRef], path: str, recursive: bool) -> list[tuple[str, str]]:
    """``(kind, path)`` of the entries under folder ``path`` ("" = root), folders first."""
    prefix = path + "/" if path else ""
    folders, leaves = set(), []
    for p in sorted(files):
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix):].split("/")
        for depth in range(1, len(parts)):
            folders.add(prefix + "/".join(parts[:depth]))
            if not recursive:
                break
        if recursive or len(parts) == 1:
            leaves.append(p)
    return [("directory", f) for f in sorted(folders)] + [("file", p) for p in leaves]


def is_folder(files: dict[str, FileRef], path: str) -> bool:
    prefix = path.rstrip("/") + "/"
    return any(p.startswith(prefix) for p in files)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    server: _Server

    # -- plumbing ----------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass  # quiet: tests print enough

    def _read_body(self) -> bytes:
        """Read the whole request body (Content-Length or chunked) so keep-alive stays in sync."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, err: HubError) -> None:
        # Header values must be latin-1: escape anything else (e.g. a non-ASCII path).
        message = err.message.replace("\n", " ").encode("ascii", "backslashreplace").decode()
        headers = {"X-Error-Message": message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json({"error": err.message}, err.status, headers)

    def _dispatch(self) -> None:
        self.body = self._read_body()
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        # Split the raw path before unquoting: revisions and paths may hold %2F.
        self.segments = [unquote(s) for s in url.path.split("/")[1:]]
        self.server.requests.append((self.command, url.path))
        try:
            self._route()
        except HubError as err:
            self._error(err)
        except (KeyError, ValueError, TypeError) as err:
            self._error(HubError(400, "", f"Bad request: {type(err).__name__}: {err}"))
        except Exception as err:  # a server bug: answer (so the client does not hang) and record it
            self.server.errors.append(traceback.format_exc())
            self._error(HubError(500, "", f"hub_server error: {type(err).__name__}: {err}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- auth --------------------------------------------------------------------------------
    def _token_ok(self) -> bool | None:
        """True: the server's token; None: no token; a wrong token is a 401 right away."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        if auth != f"Bearer {self.server.token}":
            raise HubError(401, "", "Invalid credentials in Authorization header")
        return True

    def _require_write(self) -> None:
        if not self._token_ok():
            raise HubError(401, "", "You must be authenticated to write to the Hub (send a token)")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.server.store.get_repo(repo_type, repo_id)
        if repo.private and not self._token_ok():
            # The Hub hides private repos from anonymous users behind the same error.
            raise HubError(401, "RepoNotFound", f"Repository Not Found for {repo_type} {repo_id}")
        return repo

    # -- routing -----------------------------------------------------------------------------
    def _route(self) -> None:
        s, method = self.segments, self.command
        if s[:1] == ["api"]:
            return self._route_api(s[1:], method)
        if s[:1] == ["lfs-upload"] and len(s) == 2 and method == "PUT":
            return self._lfs_put(s[1])
        repo_type = "model"
        if s[:1] in (["datasets"], ["spaces"]):
            repo_type, s = REPO_TYPES[s[0]], s[1:]
        if len(s) == 6 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"]:
            if method == "POST":
                return self._lfs_batch(repo_type, f"{s[0]}/{s[1][:-4]}")
        if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{s[0]}/{s[1]}", s[3], "/".join(s[4:]))
        raise HubError(404, "", f"hub_server: no route for {method} {self.path}")

    def _route_api(self, s: list[str], method: str) -> None:
        store = self.server.store
        if s == ["whoami-v2"] and method == "GET":
            return self._whoami()
        if s == ["agent-harnesses"] and method == "GET":
            return self._json({"standardEnvVars": [], "harnesses": {}})  # no agent detection
        if s == ["validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if s == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if s == ["repos", "delete"] and method == "DELETE":
            self._require_write()
            payload = json.loads(self.body or b"{}")
            store.delete_repo(payload.get("type") or "model", self._payload_repo_id(payload))
            return self._send(200)
        if len(s) < 3 or s[0] not in REPO_TYPES:
            raise HubError(404, "", f"hub_server: no route for {method} {self.path}")
        repo_type, repo_id, rest = REPO_TYPES[s[0]], f"{s[1]}/{s[2]}", s[3:]
        repo = self._repo(repo_type, repo_id)
        action = rest[0] if rest else None
        if method == "GET" and (not rest or (action == "revision" and len(rest) == 2)):
            return self._repo_info(repo, rest[1] if rest else "main")
        if action == "tree" and method == "GET" and len(rest) >= 2:
            return self._tree(repo, rest[1], "/".join(rest[2:]).strip("/"))
        if action == "paths-info" and method == "POST" and len(rest) == 2:
            return self._paths_info(repo, rest[1])
        if action == "preupload" and method == "POST" and len(rest) == 2:
            return self._preupload(repo, rest[1])
        if action == "commit" and method == "POST" and len(rest) == 2:
            return self._commit(repo, rest[1])
        if action == "commits" and method == "GET" and len(rest) == 2:
            return self._commits(repo, rest[1])
        if action == "refs" and method == "GET" and len(rest) == 1:
            return self._refs(repo)
        if action == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
            return self._branch(repo, rest[1])
        if action == "tag" and len(rest) == 2 and method in ("POST", "DELETE"):
            return self._tag(repo, rest[1])
        if action == "settings" and method == "PUT" and len(rest) == 1:
            self._require_write()
            payload = json.loads(self.body or b"{}")
            if "private" in payload:
                repo.private = bool(payload["private"])
            return self._json({})
        raise HubError(404, "", f"hub_server: no route for {method} {self.path}")

    # -- endpoints ---------------------------------------------------------------------------
    def _whoami(self) -> None:
        if not self._token_ok():
            raise HubError(401, "", "Invalid credentials in Authorization header")
        store = self.server.store
        self._json({
            "type": "user", "id": "0" * 24, "name": store.user, "fullname": "Hyperrep Tester",
            "email": None, "emailVerified": True, "isPro": False, "canPay": False,
            "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"}
                     for org in store.orgs],
            "auth": {"type": "access_token",
                     "accessToken": {"displayName": "test", "role": "write", "createdAt": _now()}},
        })

    def _validate_yaml(self) -> None:
        """Check a README's YAML front matter parses to a mapping, as the Hub does on commit."""
        import yaml  # a dependency of the package; only this route needs it

        content = json.loads(self.body).get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        if match is not None:
            try:
                metadata = yaml.safe_load(match.group(1))
            except yaml.YAMLError as err:
                return self._json({"errors": [{"message": f"Invalid YAML: {err}"}]}, 400)
            if metadata is not None and not isinstance(metadata, dict):
                return self._json({"errors": [{"message": "YAML metadata must be a mapping"}]}, 400)
        self._json({"errors": [], "warnings": []})

    @staticmethod
    def _payload_repo_id(payload: dict) -> str:
        name, org = payload.get("name"), payload.get("organization")
        if not name:
            raise HubError(400, "", "Missing repo name")
        return f"{org}/{name}" if org else f"{DEFAULT_USER}/{name}"

    def _create_repo(self) -> None:
        self._require_write()
        payload = json.loads(self.body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = self._payload_repo_id(payload)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{self.server.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        try:
            self.server.store.create_repo(repo_type, repo_id, private)
        except HubError as err:
            if err.status != 409:
                raise
            # Like the Hub, a 409 names the existing repo's url: create_repo(exist_ok=True) reads it
            # (a second push_to_hub to one repo, e.g. model then tokenizer).
            return self._json({"error": err.message, "url": url}, 409, {"X-Error-Message": err.message})
        self._json({"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def _repo_info(self, repo: Repo, revision: str) -> None:
        commit = repo.resolve(revision)
        with_meta = self.query.get("files_metadata", ["false"])[0].lower() == "true"
        siblings = []
        for path, ref in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if with_meta:
                sibling.update(size=ref.size, blobId=ref.git_oid)
                if ref.lfs:
                    sibling["lfs"] = {"size": ref.size, "sha256": ref.sha256,
                                      "pointerSize": len(lfs_pointer(ref.sha256, ref.size))}
            siblings.append(sibling)
        self._json({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "createdAt": repo.created_at, "lastModified": commit.date, "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        })

    def _expand(self) -> bool:
        return self.query.get("expand", ["false"])[0].lower() == "true"

    def _tree(self, repo: Repo, revision: str, path: str) -> None:
        commit = repo.resolve(revision)
        if path and not is_folder(commit.files, path):
            raise HubError(404, "EntryNotFound", f"{path} is not a folder at {revision}")
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        expand = self._expand()
        entries = []
        for kind, p in list_tree(commit.files, path, recursive):
            last = last_change(repo, commit, p) if expand else None
            entries.append(file_info(p, commit.files[p], last) if kind == "file"
                           else folder_info(p, commit.files, last))
        self._json(entries)

    def _paths_info(self, repo: Repo, revision: str) -> None:
        commit = repo.resolve(revision)
        form = parse_qs(self.body.decode())
        expand = form.get("expand", ["false"])[0].lower() == "true"
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            last = last_change(repo, commit, path) if expand else None
            if path in commit.files:
                out.append(file_info(path, commit.files[path], last))
            elif is_folder(commit.files, path):
                out.append(folder_info(path, commit.files, last))
        self._json(out)

    def _preupload(self, repo: Repo, revision: str) -> None:
        self._require_write()
        head = repo.resolve(revision)
        files = json.loads(self.body)["files"]
        out = []
        for f in files:
            lfs = is_lfs_path(f["path"], f["size"])
            existing = head.files.get(f["path"])
            # The client compares this oid with its own (sha256 for LFS, git sha1 otherwise).
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False, "oid": oid})
        self._json({"files": out})

    def _commit(self, repo: Repo, revision: str) -> None:
        self._require_write()
        if self.query.get("create_pr", ["0"])[0] == "1":
            raise HubError(400, "", "hub_server does not support pull requests (create_pr=True)")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "", "The commit payload must start with a header line")
        commit = self.server.store.commit(repo, revision, lines[0]["value"], lines[1:])
        url = f"{self.server.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": f"{url}/commit/{commit.oid}",
                    "hookOutput": "", "pullRequestUrl": None})

    def _commits(self, repo: Repo, revision: str) -> None:
        history = repo.history(repo.resolve(revision))
        self._json([{"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                     "authors": [{"user": self.server.store.user}]} for c in history])

    def _refs(self, repo: Repo) -> None:
        def ref(kind, name, oid):
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}

        self._json({"branches": [ref("heads", n, o) for n, o in repo.branches.items()],
                    "tags": [ref("tags", n, o) for n, o in repo.tags.items()],
                    "converts": [], "pullRequests": []})

    def _branch(self, repo: Repo, name: str) -> None:
        self._require_write()
        with self.server.store.lock:
            if self.command == "DELETE":
                if name not in repo.branches:
                    raise HubError(404, "RevisionNotFound", f"Invalid rev id: {name}")
                if name == "main":
                    raise HubError(403, "", "Cannot delete the main branch")
                del repo.branches[name]
                return self._json({})
            if name in repo.branches:
                raise HubError(409, "", f"Reference already exists: refs/heads/{name}")
            payload = json.loads(self.body or b"{}")
            start = repo.resolve(payload.get("startingPoint") or "main")
            repo.branches[name] = start.oid
        self._json({})

    def _tag(self, repo: Repo, revision_or_tag: str) -> None:
        self._require_write()
        with self.server.store.lock:
            if self.command == "DELETE":
                if repo.tags.pop(revision_or_tag, None) is None:
                    raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision_or_tag}")
                return self._json({})
            tag = json.loads(self.body)["tag"]
            if tag in repo.tags:
                raise HubError(409, "", f"Tag already exists: {tag}")
            repo.tags[tag] = repo.resolve(revision_or_tag).oid
        self._json({})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_write()
        self._repo(repo_type, repo_id)
        payload = json.loads(self.body)
        if payload.get("operation") != "upload":
            raise HubError(400, "", "hub_server only supports LFS batch uploads")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.server.store.blobs:
                href = f"{self.server.endpoint}/lfs-upload/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, "", f"LFS upload does not match its sha256 {oid}")
        self.server.store.put_blob(self.body)
        self._send(200)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = repo.resolve(revision)
        ref = commit.files.get(path)
        if ref is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {revision}")
        content = self.server.store.blobs[ref.sha256]
        # The Hub's ETag is the git oid, or the sha256 for LFS files: the cache names blobs by it.
        etag = ref.sha256 if ref.lfs else ref.git_oid
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if ref.lfs:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = ref.size
        status, body = 200, content
        byte_range = self.headers.get("Range")
        if byte_range:
            start, end = _parse_range(byte_range, len(content))
            if start >= len(content):
                headers["Content-Range"] = f"bytes */{len(content)}"
                return self._json({"error": "Requested range not satisfiable"}, 416, headers)
            status, body = 206, content[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(content)}"
        self._send(status, body, headers, content_type="application/octet-stream")


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or match.groups() == ("", ""):
        raise HubError(400, "", f"Unsupported Range header: {header}")
    first, last = match.groups()
    if first == "":
        return max(size - int(last), 0), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: HubStore
    token: str
    endpoint: str
    requests: list
    errors: list


class HubServer:
    """A Hub-compatible HTTP server on 127.0.0.1, serving in a background thread.

    Binding happens in ``__init__`` (``port=0`` picks a free port), so the port is reserved at
    once; ``start()`` begins serving and ``stop()`` shuts down. ``requests`` records
    ``(method, path)`` of every request, handy to assert what a client did; ``errors`` holds
    the tracebacks of server bugs (answered with 500).
    """

    def __init__(self, port: int = 0, token: str = DEFAULT_TOKEN, user: str = DEFAULT_USER,
                 orgs: tuple[str, ...] = (DEFAULT_ORG,)):
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.port = self.httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.token, self.user, self.orgs = token, user, orgs
        self.httpd.store = self.store = HubStore(user, orgs)
        self.httpd.token, self.httpd.endpoint = token, self.endpoint
        self.httpd.requests = self.requests = []
        self.httpd.errors = self.errors = []
        self._thread: threading.Thread | None = None
        self._counter = 0

    def start(self) -> HubServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def new_repo_id(self, name: str = "repo", namespace: str | None = None) -> str:
        """A repo id no other test uses: ``{namespace or user}/{name}-{n}-{random}``."""
        with self.store.lock:
            self._counter += 1
            n = self._counter
        # Hub repo names: letters, digits, "_", "-", "." and no "--" or "..".
        name = re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-")[:60] or "repo"
        return f"{namespace or self.user}/{name}-{n}-{uuid.uuid4().hex[:6]}"

    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict:
        """Server-side view of a revision: ``{path: content bytes}``; for assertions."""
        commit = self.store.get_repo(repo_type, repo_id).resolve(revision)
        return {p: self.store.blobs[f.sha256] for p, f in commit.files.items()}

    def is_lfs(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bool:
        """Whether ``path`` was committed as an LFS file."""
        return self.store.get_repo(repo_type, repo_id).resolve(revision).files[path].lfs
