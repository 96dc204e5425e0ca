"""A small stand-in for the Hugging Face hub API on 127.0.0.1, for running the real huggingface_hub client offline.

It implements what `HfApi.create_repo`, `create_branch`, `repo_info` and `create_commit` call (huggingface_hub
1.x/2.x paths): POST /api/repos/create, POST /api/models/{repo}/branch/{branch}, GET /api/models/{repo}[/revision/
{rev}], POST /api/validate-yaml, POST /api/models/{repo}/preupload/{rev} and the ndjson POST
/api/models/{repo}/commit/{rev}. Preupload answers "regular" for every file, so contents travel base64-encoded
in the commit and no LFS/Xet storage protocol is needed. GET /api/agent-harnesses (a public registry
huggingface_hub 2.x fetches once per process for its user agent) answers an empty registry. Requests need `Authorization: Bearer <token>`.

Failure injection: `fail={"create": 500}` answers that status on a route; `delay={"create": 5}` stalls a route
(bounded, and released as soon as the server stops). Route names: create, branch, repo_info, validate_yaml,
preupload, commit. `read_only=True` answers 403 on commits like the hub does for a read-only token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>.+)$"), "branch"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>.+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>.+)$"), "commit"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(/revision/(?P<rev>.+))?$"), "repo_info"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "agent_harnesses"),
]


def validate_model_index(metadata: dict) -> list[str]:
    """Errors against the hub's model-index shape: [{name, results: [{task: {type, name?}, dataset: {type, name,
    split?, config?}, metrics: [{type, value, name?}]}]}]; [] when valid or absent."""
    if "model-index" not in metadata:
        return []
    index = metadata["model-index"]
    if not isinstance(index, list) or not index:
        return ["model-index must be a non-empty list"]
    errors = []
    for i, model in enumerate(index):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f"model-index[{i}].name must be a string")
            continue
        if not isinstance(model.get("results"), list) or not model["results"]:
            errors.append(f"model-index[{i}].results must be a non-empty list")
            continue
        for j, result in enumerate(model["results"]):
            where = f"model-index[{i}].results[{j}]"
            task, dataset, metrics = (result.get(k) if isinstance(result, dict) else None
                                      for k in ("task", "dataset", "metrics"))
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f"{where}.task.type must be a string")
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("type", "name")):
                errors.append(f"{where}.dataset needs string type and name")
            elif any(k in dataset and not isinstance(dataset[k], str) for k in ("split", "config", "revision")):
                errors.append(f"{where}.dataset split/config/revision must be strings")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{where}.metrics must be a non-empty list")
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append(f"{where}.metrics[{k}] needs a string type and a value")
    return errors


def front_matter(text: str) -> dict:
    """The YAML metadata block of a README.md ({} when there is none)."""
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL)
    return (yaml.safe_load(match.group(1)) or {}) if match else {}


class FakeHub:
    """Threaded HTTP server with in-memory repos: {repo_id: {"private": bool, "branches": {name: {path: bytes}}}}."""

    def __init__(self, token: str = "hf_fake_write_token_0123456789", *, user: str = "alice",
                 fail: dict[str, int] | None = None,
                 delay: dict[str, float] | None = None, read_only: bool = False, max_delay: float = 10.0,
                 lifetime: float = 120.0) -> None:
        self.token = token
        self.user = user  # the token's namespace: where a bare repo name is created
        self.fail = dict(fail or {})
        self.delay = {k: min(v, max_delay) for k, v in (delay or {}).items()}
        self.read_only = read_only
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.calls: list[tuple[str, str]] = []  # (route name, path)
        self.yaml_validations: list[dict] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._watchdog = threading.Timer(lifetime, self._stop)  # stops even if a test never exits the context
        self._watchdog.daemon = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        self._watchdog.start()
        return self

    def __exit__(self, *exc) -> None:
        self._watchdog.cancel()
        self._stop()
        self._thread.join(timeout=5)

    def _stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()  # wakes stalled handlers
            self._server.shutdown()
            self._server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"].get(branch, {})

    # ------------------------------------------------------------------------------------------ routes
    def handle(self, route: str, match: re.Match, headers, body: bytes) -> tuple[int, dict, dict]:
        """(status, JSON body, extra headers) for one request."""
        if route in self.delay:
            self._stopped.wait(self.delay[route])
        if route == "agent_harnesses":  # huggingface_hub>=2 fetches this public registry once per process
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}, {
                "X-Error-Message": "Invalid credentials in Authorization header"}
        if route in self.fail:
            status = self.fail[route]
            return status, {"error": f"injected failure {status}"}, {"X-Error-Message": f"injected failure {status}"}
        payload = json.loads(body or b"{}") if route not in ("commit",) else None
        with self._lock:
            return getattr(self, f"_{route}")(match, payload, body)

    def _create(self, match, payload, body):
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.repos[repo_id] = {"private": private, "branches": {"main": {}}}
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}, {}

    def _repo(self, match):
        repo_id = unquote(match.group("repo"))
        return repo_id, self.repos.get(repo_id)

    def _not_found(self, repo_id):
        return 404, {"error": f"Repository {repo_id} not found"}, {"X-Error-Code": "RepoNotFound"}

    def _branch(self, match, payload, body):
        repo_id, repo = self._repo(match)
        if repo is None:
            return self._not_found(repo_id)
        branch = unquote(match.group("rev"))
        if branch in repo["branches"]:
            return 409, {"error": "Reference already exists"}, {}
        repo["branches"][branch] = dict(repo["branches"]["main"])
        return 200, {}, {}

    def _repo_info(self, match, payload, body):
        repo_id, repo = self._repo(match)
        if repo is None:
            return self._not_found(repo_id)
        return 200, {"id": repo_id, "private": repo["private"], "sha": "0" * 40}, {}

    def _validate_yaml(self, match, payload, body):
        metadata = front_matter(payload.get("content", ""))
        self.yaml_validations.append(metadata)
        errors = validate_model_index(metadata)
        status = 400 if errors else 200
        return status, {"errors": [{"message": e} for e in errors], "warnings": []}, {}

    def _preupload(self, match, payload, body):
        repo_id, repo = self._repo(match)
        if repo is None:
            return self._not_found(repo_id)
        if unquote(match.group("rev")) not in repo["branches"]:
            return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in payload["files"]]
        return 200, {"files": files, "commitOid": "0" * 40}, {}

    def _commit(self, match, payload, body):
        repo_id, repo = self._repo(match)
        if repo is None:
            return self._not_found(repo_id)
        branch = unquote(match.group("rev"))
        if branch not in repo["branches"]:
            return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
        if self.read_only:
            return 403, {"error": "You don't have the rights to create a commit in this repo"}, {
                "X-Error-Message": "You don't have the rights to create a commit in this repo"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {}
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] != "header":
                return 400, {"error": f"fake hub does not support commit entries of kind {line['key']}"}, {}
        repo["branches"][branch].update(files)
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append({"repo_id": repo_id, "branch": branch, "summary": header["summary"], "files": files})
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo_id}/commit/{oid}"}, {}


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _dispatch(self, method: str) -> None:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            for route_method, pattern, name in _ROUTES:
                match = pattern.match(path)
                if route_method == method and match:
                    hub.calls.append((name, path))
                    status, data, headers = hub.handle(name, match, self.headers, body)
                    break
            else:
                hub.calls.append(("unknown", f"{method} {path}"))
                status, data, headers = 404, {"error": f"fake hub has no route {method} {path}"}, {}
            if hub._stopped.is_set():
                return
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler
