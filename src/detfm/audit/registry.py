"""A content-addressed model registry with lineage (which backbone, which data).

Layout of a registry folder::

    REGISTRY/
      registry.db                 SQLite: models, versions, aliases, files, inputs, parents
      blobs/ab/ab12...ef          every stored file, named by its SHA-256 (read-only)

A *version* is a run's ``model.safetensors``, identified by its SHA-256, under a name.
Versions count 1, 2, ... per name; registering the same weights under the same name again
returns the existing version. The run's small files (config.yaml, backbone.yaml,
eval.json, split.json, manifest.json, metrics.jsonl, and evaluation results found next to
it) are stored as blobs too and referenced per version, so :meth:`Registry.export` can
rebuild a loadable run directory even after the run itself is gone.

Lineage. A fine-tuning run's config names its backbone (a pretraining run directory, or
``scratch``). On registration the backbone's weights are hashed; :meth:`Registry.lineage`
finds that hash among registered versions (at query time, so registering the backbone
later still links it). The data behind each step are the manifest's input files by hash.

Concurrency. Every write is one ``BEGIN IMMEDIATE`` transaction with a busy timeout, and
blobs are written to a temporary name and renamed into place, so processes may register
models into the same registry at the same time.

Ref syntax: ``NAME`` (latest version), ``NAME:VERSION`` or ``NAME@ALIAS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detfm.evaluate import kinds
from detfm.engine.manifest import CHUNK, MANIFEST_FILE, file_record, file_sha256, iso_utc
from detfm.engine.runs import (BACKBONE_FILE, CONFIG_FILE, EVAL_FILE, METRICS_FILE, MODEL_FILE, SPLIT_FILE,
                               last_checkpoint)
from detfm.errors import DetfmError
from detfm.io import check_output_dir, follow_umask
from detfm.io.outputs import (describe_os_error, incoming_prefix, remove_paths, remove_stale_temporaries,
                              stale_temporaries, temp_prefix)

DB_FILE = "registry.db"
BLOB_DIR = "blobs"
ENV_VAR = "DETFM_REGISTRY"
EXPORT_INFO = "registry.json"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0

# role -> file name in a run directory (weights first: it identifies the version)
RUN_FILES: dict[str, str] = {
    "weights": MODEL_FILE,
    "config": CONFIG_FILE,
    "backbone": BACKBONE_FILE,
    "eval": EVAL_FILE,
    "split": SPLIT_FILE,
    "manifest": MANIFEST_FILE,
    "metrics": METRICS_FILE,
}
# role -> file names of evaluation results picked up from a run directory when present
RESULT_FILES: dict[str, tuple[str, ...]] = {
    "label_efficiency": ("results.json", "study.json"),
    "systematics": ("systematics.json", "report.json"),
    "calibration": ("calibration.json",),
}
SYSTEMATICS_KIND = kinds.SYSTEMATICS  # a report.json counts as systematics only of this kind
BACKBONE_MANIFEST = "backbone_manifest"  # role: the manifest of an unregistered backbone run
KINDS = {"# PretrainConfig": "pretrain", "# FinetuneConfig": "finetune"}
SCRATCH = "scratch"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ROLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS models (
        name TEXT PRIMARY KEY,
        created TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS versions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL REFERENCES models(name),
        version INTEGER NOT NULL,
        weights_sha256 TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('pretrain', 'finetune')),
        created TEXT NOT NULL,
        run_dir TEXT,
        metadata TEXT NOT NULL,
        UNIQUE (name, version),
        UNIQUE (name, weights_sha256))""",
    "CREATE INDEX IF NOT EXISTS versions_by_weights ON versions(weights_sha256)",
    """CREATE TABLE IF NOT EXISTS aliases (
        name TEXT NOT NULL REFERENCES models(name),
        alias TEXT NOT NULL,
        version_id INTEGER NOT NULL REFERENCES versions(id),
        PRIMARY KEY (name, alias))""",
    """CREATE TABLE IF NOT EXISTS files (
        version_id INTEGER NOT NULL REFERENCES versions(id),
        role TEXT NOT NULL,
        filename TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (version_id, role))""",
    """CREATE TABLE IF NOT EXISTS inputs (
        version_id INTEGER NOT NULL REFERENCES versions(id),
        path TEXT NOT NULL,
        sha256 TEXT,
        size INTEGER,
        PRIMARY KEY (version_id, path))""",
    """CREATE TABLE IF NOT EXISTS parents (
        version_id INTEGER PRIMARY KEY REFERENCES versions(id),
        weights_sha256 TEXT,
        path TEXT NOT NULL)""",
)


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class FileRef:
    """A stored file of a version: its role, the name it had in the run, its hash and size."""

    role: str
    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class InputRef:
    """A data file a version was trained on (sha256 None: it could not be read)."""

    path: str
    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class ParentRef:
    """The backbone a fine-tuned version started from (weights hash None: not found when registered)."""

    path: str
    weights_sha256: str | None


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, with what is needed to read its stored files."""

    root: Path
    id: int
    name: str
    version: int
    weights_sha256: str
    kind: str
    created: str
    run_dir: str | None
    metadata: dict[str, Any]
    files: dict[str, FileRef] = field(default_factory=dict)
    inputs: tuple[InputRef, ...] = ()
    parent: ParentRef | None = None
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """``NAME:VERSION``."""
        return f"{self.name}:{self.version}"

    def blob_path(self, role: str) -> Path | None:
        """Where the stored file of ``role`` lives (None if the version has none)."""
        ref = self.files.get(role)
        return None if ref is None else blob_path(self.root, ref.sha256)

    def check_stored(self) -> None:
        """Raise :class:`DetfmError` naming the first stored file that is missing or has another size
        than recorded (the contents are hashed when read, and by ``detfm registry verify``)."""
        for ref in self.files.values():
            path = blob_path(self.root, ref.sha256)
            try:
                size = path.stat().st_size
            except OSError:
                raise DetfmError(f"{self.ref}: the stored {ref.filename} ({ref.role}, {ref.sha256[:12]}) is missing "
                                 f"from {self.root}; run `detfm registry verify`") from None
            if size != ref.size:
                raise DetfmError(f"{self.ref}: the stored {ref.filename} ({ref.role}, {ref.sha256[:12]}) was altered "
                                 f"({size} B, {ref.size} B recorded); run `detfm registry verify`")

    def read_bytes(self, role: str) -> bytes | None:
        """The stored file of ``role``, checked against its hash (None if the version has none)."""
        ref = self.files.get(role)
        if ref is None:
            return None
        path = blob_path(self.root, ref.sha256)
        try:
            data = path.read_bytes()
        except OSError:
            raise DetfmError(f"{self.ref}: the stored {ref.filename} ({ref.sha256[:12]}) is missing; "
                             f"run `detfm registry verify`") from None
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise DetfmError(f"{self.ref}: the stored {ref.filename} ({ref.sha256[:12]}) was altered; "
                             f"run `detfm registry verify`")
        return data

    def read_json(self, role: str) -> Any:
        """The stored JSON file of ``role``, parsed (None if absent or not JSON)."""
        data = self.read_bytes(role)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None


@dataclass(frozen=True)
class LineageNode:
    """One step of a lineage chain: a registered version, or an unregistered backbone run."""

    weights_sha256: str | None
    entry: ModelVersion | None
    path: str | None
    inputs: tuple[InputRef, ...]

    @property
    def label(self) -> str:
        return self.entry.ref if self.entry is not None else "(unregistered)"


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`Registry.verify` found."""

    checked: int
    missing: dict[str, list[str]]    # blob sha256 -> the versions and roles that reference it
    tampered: dict[str, list[str]]
    integrity: str                   # SQLite's integrity_check answer ("ok")
    inconsistent: list[str] = field(default_factory=list)  # rows whose hash, size, role or name is wrong
    leftovers: list[str] = field(default_factory=list)     # temporaries of killed writers found
    removed: list[str] = field(default_factory=list)       # ... and removed (verify with repair)

    @property
    def ok(self) -> bool:
        """Nothing missing, altered or inconsistent (leftover temporaries are litter, not damage)."""
        return not self.missing and not self.tampered and not self.inconsistent and self.integrity == "ok"


# ----------------------------------------------------------------------------- paths and refs
def default_registry_dir() -> Path:
    """``$DETFM_REGISTRY``, else ``$XDG_DATA_HOME/detfm/registry``, else ``~/.local/share/detfm/registry``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "detfm" / "registry"


def blob_path(root: Path, sha256: str) -> Path:
    """Where a blob with this hash lives in the registry at ``root``."""
    return root / BLOB_DIR / sha256[:2] / sha256


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``(name, version or None, alias or None)`` of ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``."""
    version: int | None = None
    alias: str | None = None
    name = ref
    if "@" in ref:
        name, alias = ref.split("@", 1)
        _check_name(alias, "alias")
    elif ":" in ref:
        name, number = ref.split(":", 1)
        if not number.isdigit() or int(number) < 1:
            raise DetfmError(f"bad model reference {ref!r}: the version after ':' must be a number >= 1")
        version = int(number)
    _check_name(name, "model name")
    return name, version, alias


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name):
        raise DetfmError(f"bad {what} {name!r}: use letters, digits, '.', '_' and '-', starting with a "
                         f"letter or digit (at most 128 characters)")


def run_kind(run_dir: str | os.PathLike[str]) -> str:
    """``"pretrain"`` or ``"finetune"``, from the first line of the run's config.yaml."""
    path = Path(run_dir) / RUN_FILES["config"]
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().strip()
    except OSError:
        raise DetfmError(f"{run_dir}: not a run directory (no readable {RUN_FILES['config']})") from None
    if first not in KINDS:
        raise DetfmError(f"{path}: cannot tell the kind of run (first line {first!r}; expected "
                         f"{' or '.join(repr(k) for k in KINDS)})")
    return KINDS[first]


# ----------------------------------------------------------------------------- the registry
class Registry:
    """A registry folder (created on the first write). ``root=None``: :func:`default_registry_dir`."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_registry_dir()

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    # -- connections ---------------------------------------------------------------------
    def _connect(self, create: bool) -> sqlite3.Connection:
        if not create and not self.db_path.is_file():
            raise DetfmError(f"no model registry at {self.root} (register a run with `detfm registry add`)")
        if create:
            try:
                (self.root / BLOB_DIR).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DetfmError(f"cannot create the registry at {self.root}: {describe_os_error(exc)}") from None
            if not os.access(self.root, os.W_OK | os.X_OK) or (
                    self.db_path.exists() and not os.access(self.db_path, os.W_OK)):
                raise DetfmError(f"{self.root}: the registry is not writable (permission denied)")
        try:
            con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise DetfmError(f"{self.db_path}: cannot open the registry database ({exc})") from None
        return con

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` (takes the write lock at once) or a read snapshot."""
        con = self._connect(create=write)
        try:
            try:
                con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                if write:
                    _ensure_schema(con)
                yield con
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise DetfmError(f"{self.db_path}: registry database error ({exc})") from None
        finally:
            con.close()

    # -- blobs ---------------------------------------------------------------------------
    def store_blob(self, src: str | os.PathLike[str]) -> tuple[str, int]:
        """Copy a file into the blob store (hashing while copying); return ``(sha256, size)``.

        The copy lands under a temporary name and is renamed into place, so concurrent
        writers of the same blob, or an interrupted copy, never leave a partial blob.
        """
        folder = self.root / BLOB_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=incoming_prefix(), dir=folder)
        except OSError as exc:
            raise DetfmError(f"cannot store {src} in the registry at {self.root}: {describe_os_error(exc)}") from None
        tmp = Path(tmp_name)
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            dest = blob_path(self.root, sha)
            if dest.is_file() and file_sha256(dest) == sha:
                tmp.unlink()
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp, 0o444 & ~_umask())  # read-only, and no wider than the umask allows
                os.replace(tmp, dest)
            return sha, size
        except OSError as exc:
            raise DetfmError(f"cannot store {src} in the registry at {self.root}: {describe_os_error(exc)}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # -- add -----------------------------------------------------------------------------
    def add(self, run_dir: str | os.PathLike[str], name: str, *, alias: str | None = None,
            attach: Mapping[str, str | os.PathLike[str]] | None = None) -> tuple[ModelVersion, bool]:
        """Register the finished run ``run_dir`` under ``name``; return ``(version, created)``.

        The same weights under the same name give the existing version (``created=False``;
        files it lacked, such as a newer eval.json or ``attach``-ed results, are added to it).
        ``alias`` is pointed at the version. ``attach`` maps extra roles (e.g.
        ``systematics``, ``calibration``, ``label_efficiency``) to JSON files to keep with it.
        """
        run = Path(run_dir)
        _check_name(name, "model name")
        if alias is not None:
            _check_name(alias, "alias")
        if not run.is_dir():
            raise DetfmError(f"{run}: no such run directory")
        if not (run / RUN_FILES["weights"]).is_file():
            raise DetfmError(f"{run}: no {RUN_FILES['weights']} (only finished runs can be registered)")
        kind = run_kind(run)
        check_weights_file(run / RUN_FILES["weights"])
        sources = _run_sources(run, attach or {})
        for role, (filename, _) in sources.items():
            _check_filename(filename, role)
        self.clean_leftovers()  # incoming blobs of killed writers
        parent, backbone_manifest = _parent_of(run) if kind == "finetune" else (None, None)
        if backbone_manifest is not None:
            sources[BACKBONE_MANIFEST] = (f"backbone.{MANIFEST_FILE}", backbone_manifest)
        stored = {role: (filename, *self.store_blob(path)) for role, (filename, path) in sources.items()}
        inputs, inputs_from = _inputs_of(run)
        metadata = {**_metadata_of(run, kind), "inputs_from": inputs_from}
        weights_sha = stored["weights"][1]
        with self._transaction(write=True) as con:
            now = iso_utc(time.time())
            con.execute("INSERT OR IGNORE INTO models (name, created) VALUES (?, ?)", (name, now))
            row = con.execute("SELECT id FROM versions WHERE name = ? AND weights_sha256 = ?",
                              (name, weights_sha)).fetchone()
            created = row is None
            if created:
                (number,) = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?",
                                        (name,)).fetchone()
                cur = con.execute(
                    "INSERT INTO versions (name, version, weights_sha256, kind, created, run_dir, metadata) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, number, weights_sha, kind, now, str(run.resolve()), json.dumps(metadata)))
                version_id = int(cur.lastrowid or 0)
                con.executemany("INSERT INTO inputs (version_id, path, sha256, size) VALUES (?, ?, ?, ?)",
                                [(version_id, i.path, i.sha256, i.size) for i in inputs])
                if parent is not None:
                    con.execute("INSERT INTO parents (version_id, weights_sha256, path) VALUES (?, ?, ?)",
                                (version_id, parent.weights_sha256, parent.path))
            else:
                version_id = int(row[0])
            con.executemany(
                "INSERT OR IGNORE INTO files (version_id, role, filename, sha256, size) VALUES (?, ?, ?, ?, ?)",
                [(version_id, role, filename, sha, size) for role, (filename, sha, size) in stored.items()])
            if alias is not None:
                con.execute("INSERT OR REPLACE INTO aliases (name, alias, version_id) VALUES (?, ?, ?)",
                            (name, alias, version_id))
            entry = _load_version(con, self.root, version_id)
        return entry, created

    # -- read ----------------------------------------------------------------------------
    def get(self, ref: str) -> ModelVersion:
        """The version ``ref`` names (``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``)."""
        name, version, alias = parse_ref(ref)
        with self._transaction(write=False) as con:
            if not con.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
                known = [r[0] for r in con.execute("SELECT name FROM models ORDER BY name")]
                raise DetfmError(f"no model named {name!r} in {self.root}"
                                 f" (known: {', '.join(known) if known else 'none'})")
            if alias is not None:
                row = con.execute("SELECT version_id FROM aliases WHERE name = ? AND alias = ?",
                                  (name, alias)).fetchone()
                if row is None:
                    raise DetfmError(f"model {name!r} has no alias {alias!r}")
            elif version is not None:
                row = con.execute("SELECT id FROM versions WHERE name = ? AND version = ?",
                                  (name, version)).fetchone()
                if row is None:
                    (latest,) = con.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
                    raise DetfmError(f"model {name!r} has no version {version} (latest: {latest})")
            else:
                row = con.execute("SELECT id FROM versions WHERE name = ? ORDER BY version DESC LIMIT 1",
                                  (name,)).fetchone()
                if row is None:
                    raise DetfmError(f"model {name!r} has no versions")
            return _load_version(con, self.root, int(row[0]))

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of ``name``, or of all models), by name then version."""
        if not self.db_path.is_file():
            return []
        with self._transaction(write=False) as con:
            if not _has_schema(con):
                return []
            query = "SELECT id FROM versions" + (" WHERE name = ?" if name else "") + " ORDER BY name, version"
            ids = [int(r[0]) for r in con.execute(query, (name,) if name else ())]
            return [_load_version(con, self.root, i) for i in ids]

    def find_by_weights(self, sha256: str) -> list[ModelVersion]:
        """The versions whose weights have this hash, oldest first."""
        with self._transaction(write=False) as con:
            ids = [int(r[0]) for r in con.execute("SELECT id FROM versions WHERE weights_sha256 = ? ORDER BY id",
                                                  (sha256,))]
            return [_load_version(con, self.root, i) for i in ids]

    def set_alias(self, ref: str, alias: str) -> ModelVersion:
        """Point ``NAME@alias`` at the version ``ref`` names (moving it if it pointed elsewhere)."""
        _check_name(alias, "alias")
        entry = self.get(ref)
        with self._transaction(write=True) as con:
            con.execute("INSERT OR REPLACE INTO aliases (name, alias, version_id) VALUES (?, ?, ?)",
                        (entry.name, alias, entry.id))
            return _load_version(con, self.root, entry.id)

    # -- lineage -------------------------------------------------------------------------
    def lineage(self, ref: str | ModelVersion) -> list[LineageNode]:
        """The chain from a version back through its backbones: ``[model, backbone, ...]``.

        A backbone is found by its weights hash among registered versions (the oldest such
        version). An unregistered backbone ends the chain with its path and, when its
        manifest was found at registration, its data files.
        """
        entry = self.get(ref) if isinstance(ref, str) else ref
        chain = [LineageNode(entry.weights_sha256, entry, entry.run_dir, entry.inputs)]
        seen = {entry.id}
        current = entry
        while current.parent is not None:
            parent = current.parent
            found = self.find_by_weights(parent.weights_sha256) if parent.weights_sha256 else []
            if not found or found[0].id in seen:
                manifest = current.read_json(BACKBONE_MANIFEST) or {}
                inputs = tuple(InputRef(str(i.get("path")), i.get("sha256"), i.get("size"))
                               for i in manifest.get("inputs") or [] if isinstance(i, dict))
                chain.append(LineageNode(parent.weights_sha256, None, parent.path, inputs))
                break
            current = found[0]
            seen.add(current.id)
            chain.append(LineageNode(current.weights_sha256, current, current.run_dir, current.inputs))
        return chain

    # -- verify --------------------------------------------------------------------------
    def verify(self, repair: bool = False) -> VerifyReport:
        """Check every stored blob and every hash column.

        A blob is *missing* or *tampered* (its bytes no longer hash to its name). A row is
        *inconsistent* when a version's ``weights_sha256`` differs from its weights file, a
        file's recorded size differs from its blob, a blob does not fit its role (weights
        that are not a safetensors file, a config that is not a detfm config, a JSON role
        that is not JSON), or a stored file name is not a plain name. Leftover temporaries
        (``blobs/.incoming-*`` of killed writers) are listed, and removed with ``repair``.
        """
        with self._transaction(write=False) as con:
            (integrity,) = con.execute("PRAGMA integrity_check").fetchone()
            refs: dict[str, list[str]] = {}
            rows: list[tuple[str, str, int, str, str, int, str]] = []
            if _has_schema(con):
                rows = list(con.execute(
                    "SELECT f.sha256, v.name, v.version, f.role, f.filename, f.size, v.weights_sha256 FROM files f "
                    "JOIN versions v ON v.id = f.version_id ORDER BY v.name, v.version, f.role"))
                no_weights = list(con.execute(
                    "SELECT v.name, v.version FROM versions v WHERE NOT EXISTS "
                    "(SELECT 1 FROM files f WHERE f.version_id = v.id AND f.role = 'weights')"))
            else:
                no_weights = []
        inconsistent = [f"{name}:{version}: no weights file recorded" for name, version in no_weights]
        for sha, name, version, role, filename, size, weights_sha in rows:
            refs.setdefault(sha, []).append(f"{name}:{version} {role}")
            who = f"{name}:{version} {role}"
            if role == "weights" and sha != weights_sha:
                inconsistent.append(f"{who}: versions.weights_sha256 {weights_sha[:12]} is not the hash of "
                                    f"its weights file {sha[:12]}")
            if not _is_plain_name(filename):
                inconsistent.append(f"{who}: file name {filename!r} is not a plain file name")
        missing: dict[str, list[str]] = {}
        tampered: dict[str, list[str]] = {}
        intact: set[str] = set()
        for sha, users in refs.items():
            path = blob_path(self.root, sha)
            try:
                actual = file_sha256(path)
            except OSError:
                missing[sha] = users
                continue
            if actual != sha:
                tampered[sha] = users
            else:
                intact.add(sha)
        for sha, name, version, role, _filename, size, _ in rows:
            if sha not in intact:
                continue
            who = f"{name}:{version} {role}"
            path = blob_path(self.root, sha)
            if path.stat().st_size != size:
                inconsistent.append(f"{who}: recorded size {size} B, the blob {sha[:12]} has {path.stat().st_size} B")
            problem = _role_problem(role, path)
            if problem:
                inconsistent.append(f"{who}: the blob {sha[:12]} {problem}")
        leftovers = stale_temporaries(self.root / BLOB_DIR)
        removed = remove_paths(leftovers) if repair else []
        return VerifyReport(checked=len(refs), missing=missing, tampered=tampered, integrity=str(integrity),
                            inconsistent=inconsistent, leftovers=[str(p) for p in leftovers],
                            removed=[str(p) for p in removed])

    def clean_leftovers(self) -> list[Path]:
        """Delete the temporaries killed writers left in the blob store; return those removed."""
        return remove_stale_temporaries(self.root / BLOB_DIR)

    # -- export --------------------------------------------------------------------------
    def export(self, ref: str | ModelVersion, dest: str | os.PathLike[str]) -> Path:
        """Write the version's files into the new (or empty) folder ``dest`` as a loadable run.

        Every file is checked against its hash while copied; the folder appears only when
        complete. ``registry.json`` in it names the version it came from.
        """
        entry = self.get(ref) if isinstance(ref, str) else ref
        out = Path(dest)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise DetfmError(f"{out} exists and is not an empty folder; export into a new one")
        for file in entry.files.values():
            _check_filename(file.filename, file.role, entry.ref)
        check_output_dir(out, overwrite=True)  # a folder we can write into
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out.parent, out.name)
            tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".tmp", dir=out.parent))
        except OSError as exc:
            raise DetfmError(f"cannot export to {out}: {describe_os_error(exc)}") from None
        try:
            follow_umask(tmp)  # mkdtemp makes it private
            for file in entry.files.values():
                target = tmp / file.filename
                if target.resolve().parent != tmp.resolve():
                    raise DetfmError(f"{entry.ref}: the stored file name {file.filename!r} ({file.role}) "
                                     f"resolves outside {out}; run `detfm registry verify`")
                _copy_checked(blob_path(self.root, file.sha256), target, file, entry.ref)
            info = {"name": entry.name, "version": entry.version, "weights_sha256": entry.weights_sha256,
                    "kind": entry.kind, "registry": str(self.root.resolve()), "exported": iso_utc(time.time())}
            (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DetfmError(f"cannot export to {out}: {describe_os_error(exc)}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


# ----------------------------------------------------------------------------- loading
def load_model(ref: str, registry: str | os.PathLike[str] | Registry | None = None, *,
               map_location: str = "cpu") -> Any:
    """The model ``ref`` names, ready in eval mode (a fine-tuned task, or a pretrained backbone).

    The version is exported (hash-checked) into a temporary folder and loaded from
    safetensors with :func:`detfm.recipes.adapt.load_finetuned` or :func:`detfm.recipes.pretrain.load_backbone`.
    """
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    entry = reg.get(ref)
    with tempfile.TemporaryDirectory(prefix="detfm-load-") as tmp:
        run = reg.export(entry, Path(tmp) / "run")
        if entry.kind == "finetune":
            from detfm.recipes.adapt import load_finetuned

            model = load_finetuned(run, map_location=map_location)
        else:
            from detfm.recipes.pretrain import load_backbone

            model = load_backbone(run, map_location=map_location)
    return model.eval()


# ----------------------------------------------------------------------------- helpers
def _ensure_schema(con: sqlite3.Connection) -> None:
    (found,) = con.execute("PRAGMA user_version").fetchone()
    if found > SCHEMA_VERSION:
        raise DetfmError(f"the registry was written by a newer detfm (schema {found}, this one reads "
                         f"{SCHEMA_VERSION})")
    if found < SCHEMA_VERSION:
        for statement in _SCHEMA:
            con.execute(statement)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _has_schema(con: sqlite3.Connection) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'versions'").fetchone() is not None


def _load_version(con: sqlite3.Connection, root: Path, version_id: int) -> ModelVersion:
    row = con.execute("SELECT id, name, version, weights_sha256, kind, created, run_dir, metadata "
                      "FROM versions WHERE id = ?", (version_id,)).fetchone()
    files = {role: FileRef(role, filename, sha, size) for role, filename, sha, size in con.execute(
        "SELECT role, filename, sha256, size FROM files WHERE version_id = ? ORDER BY role", (version_id,))}
    inputs = tuple(InputRef(path, sha, size) for path, sha, size in con.execute(
        "SELECT path, sha256, size FROM inputs WHERE version_id = ? ORDER BY path", (version_id,)))
    parent_row = con.execute("SELECT path, weights_sha256 FROM parents WHERE version_id = ?",
                             (version_id,)).fetchone()
    aliases = tuple(r[0] for r in con.execute("SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias",
                                              (version_id,)))
    return ModelVersion(root=root, id=row[0], name=row[1], version=row[2], weights_sha256=row[3], kind=row[4],
                        created=row[5], run_dir=row[6], metadata=json.loads(row[7]), files=files, inputs=inputs,
                        parent=None if parent_row is None else ParentRef(parent_row[0], parent_row[1]),
                        aliases=aliases)


def _run_sources(run: Path, attach: Mapping[str, str | os.PathLike[str]]) -> dict[str, tuple[str, Path]]:
    """role -> (file name, path) of everything to store for a run."""
    sources = {role: (name, run / name) for role, name in RUN_FILES.items() if (run / name).is_file()}
    for role, names in RESULT_FILES.items():
        for name in names:
            if (run / name).is_file() and (name != "report.json" or _json_kind(run / name) == SYSTEMATICS_KIND):
                sources[role] = (name, run / name)
                break
        else:
            study = _study_results_for(run) if role == "label_efficiency" else None
            if study is not None:
                sources[role] = (study.name, study)
    for role, path in attach.items():
        if not _ROLE_RE.match(role) or role in RUN_FILES:
            raise DetfmError(f"bad role {role!r} to attach: use lower-case letters, digits and '_', "
                             f"and none of {', '.join(RUN_FILES)}")
        path = Path(path)
        if not path.is_file():
            raise DetfmError(f"{path}: no such file to attach as {role}")
        sources[role] = (f"{role}{path.suffix}", path)
    return sources


def _study_results_for(run: Path) -> Path | None:
    """A label-efficiency study file in the run's parent folder that lists this run, if any."""
    for name in RESULT_FILES["label_efficiency"]:
        path = run.parent / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        runs = data.get("runs") if isinstance(data, dict) else None
        if isinstance(runs, list) and any(isinstance(r, dict) and _same_dir(r.get("run"), run) for r in runs):
            return path
    return None


def _json_kind(path: Path) -> Any:
    """The ``kind`` field of a JSON file (None if unreadable or absent)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def _same_dir(text: Any, run: Path) -> bool:
    """True if a study's ``run`` entry names ``run`` (the study file sits in the run's parent)."""
    return isinstance(text, str) and Path(text).name == run.name


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _backbone_weights(folder: Path) -> Path | None:
    for candidate in (folder / RUN_FILES["weights"], last_checkpoint(folder) / RUN_FILES["weights"]):
        if candidate.is_file():
            return candidate
    return None


def _parent_of(run: Path) -> tuple[ParentRef | None, Path | None]:
    """The backbone of a fine-tuning run (None for scratch) and its manifest file, if found."""
    backbone = _read_yaml(run / RUN_FILES["config"]).get("backbone")
    if not isinstance(backbone, str) or not backbone or backbone == SCRATCH:
        return None, None
    given = Path(backbone).expanduser()
    candidates = [given] if given.is_absolute() else [given, run.parent / given, run / given]
    for folder in candidates:
        weights = _backbone_weights(folder)
        if weights is not None:
            manifest = folder / MANIFEST_FILE
            return (ParentRef(str(folder.resolve()), file_sha256(weights)),
                    manifest if manifest.is_file() else None)
    return ParentRef(backbone, None), None


def _inputs_of(run: Path) -> tuple[list[InputRef], str]:
    """The run's data files by hash: from its manifest, else hashed now from its config."""
    manifest = run / MANIFEST_FILE
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        entries = [i for i in data.get("inputs") or [] if isinstance(i, dict) and i.get("path")]
        return [InputRef(str(i["path"]), i.get("sha256"), i.get("size")) for i in entries], "manifest"
    paths = (_read_yaml(run / RUN_FILES["config"]).get("data") or {}).get("paths") or []
    records = [file_record(p) for p in paths if isinstance(p, str)]
    return [InputRef(r["path"], r["sha256"], r["size"]) for r in records], "hashed at registration"


def _metadata_of(run: Path, kind: str) -> dict[str, Any]:
    """A small summary kept in the database: model, task, steps, final loss, headline scores."""
    cfg = _read_yaml(run / RUN_FILES["config"])
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    meta: dict[str, Any] = {"kind": kind, "model": cfg.get("model"), "steps": train.get("steps"),
                            "seed": train.get("seed")}
    if kind == "finetune":
        meta.update({k: cfg.get(k) for k in ("task", "mode", "labels", "backbone")})
    last = _last_metrics_line(run / RUN_FILES["metrics"])
    if last:
        meta["final_loss"] = last.get("loss")
    with contextlib.suppress(OSError, ValueError):
        scores = json.loads((run / RUN_FILES["eval"]).read_text(encoding="utf-8"))
        meta["eval"] = {k: v for k, v in scores.items()
                        if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    with contextlib.suppress(OSError, ValueError):
        meta["code"] = json.loads((run / MANIFEST_FILE).read_text(encoding="utf-8")).get("code")
    return meta


def _last_metrics_line(path: Path) -> dict[str, Any] | None:
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                return record
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_plain_name(name: str) -> bool:
    """A file name with no folder part: no separators, not '.', '..', empty or hidden-relative."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and Path(name).name == name)


def _check_filename(name: str, role: str, ref: str | None = None) -> None:
    if not _is_plain_name(name):
        where = f"{ref}: " if ref else ""
        raise DetfmError(f"{where}the file name {name!r} of role {role!r} is not a plain file name "
                         f"(no folders, no '..'); run `detfm registry verify`")


def check_weights_file(path: Path) -> None:
    """Raise :class:`DetfmError` unless ``path`` is a complete safetensors file with at least one tensor."""
    problem = _safetensors_problem(path)
    if problem:
        raise DetfmError(f"{path}: {problem}; only finished runs can be registered")


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (None if it is one), from its header alone."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "not a safetensors file (shorter than its 8-byte header length)"
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, 100_000_000):
                return "not a safetensors file (bad header length)"
            header = json.loads(fh.read(n))
    except OSError as exc:
        return f"cannot be read ({describe_os_error(exc)})"
    except (ValueError, UnicodeDecodeError):
        return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a table of tensors)"
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        return "holds no tensors"
    end = 0
    for name, info in tensors.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"not a safetensors file (tensor {name!r} has no data offsets)"
        end = max(end, offsets[1])
    if 8 + n + end != size:
        return f"truncated or padded: the header describes {8 + n + end} bytes, the file has {size}"
    return None


def _role_problem(role: str, path: Path) -> str | None:
    """Why the blob at ``path`` cannot be the file of ``role`` (None if it can)."""
    if role == "weights":
        problem = _safetensors_problem(path)
        return None if problem is None else f"is not a weights file: {problem}"
    if role == "config":
        try:
            with open(path, encoding="utf-8") as fh:
                first = fh.readline().strip()
        except (OSError, UnicodeDecodeError):
            first = ""
        return None if first in KINDS else "is not a run config (first line not a detfm config header)"
    if role in ("eval", "split", "manifest", BACKBONE_MANIFEST, *RESULT_FILES):
        try:
            json.loads(path.read_bytes())
        except (OSError, ValueError):
            return "is not a JSON file"
    return None


def _copy_checked(src: Path, dst: Path, file: FileRef, ref: str) -> None:
    """Copy a blob, failing if it is missing or its bytes no longer match its hash."""
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as fh, open(dst, "wb") as out:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except FileNotFoundError:
        raise DetfmError(f"{ref}: the stored {file.filename} ({file.sha256[:12]}) is missing; "
                         f"run `detfm registry verify`") from None
    if digest.hexdigest() != file.sha256:
        raise DetfmError(f"{ref}: the stored {file.filename} ({file.sha256[:12]}) was altered; "
                         f"run `detfm registry verify`")


# ----------------------------------------------------------------------------- text
def format_version(entry: ModelVersion) -> str:
    """A few lines describing a version: kind, hashes, aliases, files, headline scores."""
    lines = [f"{entry.ref}  ({entry.kind})",
             f"  weights  sha256 {entry.weights_sha256}",
             f"  created  {entry.created}",
             f"  aliases  {', '.join(entry.aliases) if entry.aliases else '-'}",
             f"  run      {entry.run_dir or '-'}"]
    code = entry.metadata.get("code") or {}
    if code:
        dirty = {True: " (uncommitted changes)", False: "", None: ""}.get(code.get("git_dirty"), "")
        lines.append(f"  code     detfm {code.get('detfm')}, commit {code.get('git_commit') or 'unknown'}{dirty}")
    scores = entry.metadata.get("eval") or {}
    numbers = {k: v for k, v in scores.items() if isinstance(v, float)}
    if numbers:
        lines.append("  eval     " + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
    lines.append("  files")
    for file in entry.files.values():
        lines.append(f"    {file.role:<18} {file.filename:<24} {file.size:>12,d} B  {file.sha256}")
    return "\n".join(lines)


def format_lineage(chain: list[LineageNode]) -> str:
    """The lineage chain as indented text: model, then backbone, each with its data files by hash."""
    lines: list[str] = []
    for depth, node in enumerate(chain):
        pad = "  " * depth
        arrow = "" if depth == 0 else "<- backbone "
        if node.entry is not None:
            lines.append(f"{pad}{arrow}{node.entry.ref} ({node.entry.kind})  weights {node.weights_sha256}")
        else:
            weights = node.weights_sha256 or "not found when registered"
            lines.append(f"{pad}{arrow}unregistered run {node.path}  weights {weights}")
        for item in node.inputs:
            lines.append(f"{pad}   data {item.path}  sha256 {item.sha256 or 'unreadable'}")
        if not node.inputs:
            lines.append(f"{pad}   data unknown")
        if node.entry is not None and node.entry.kind == "finetune" and node.entry.parent is None:
            lines.append(f"{pad}<- backbone: none (trained from scratch)")
    return "\n".join(lines)


__all__ = ["BLOB_DIR", "DB_FILE", "ENV_VAR", "FileRef", "InputRef", "LineageNode", "ModelVersion", "ParentRef",
           "Registry", "VerifyReport", "blob_path", "default_registry_dir", "format_lineage", "format_version",
           "load_model", "parse_ref", "run_kind"]
