"""Built-in gallery store ``milvus``: a Milvus collection through ``pymilvus``.

``--store milvus:LOCATION[?options]``. ``LOCATION`` ending in ``.db`` is a
Milvus Lite file (embedded, one process at a time: ``pip install
'clip4sketch[milvus]'``); ``http://``/``https://`` is a Milvus server or
cluster (the same code; sharding and replicas are the server's)::

    c4s match enroll --store "milvus:galleries/mugshots.db?collection=mugshots" ...
    c4s match search --store "milvus:http://milvus:19530?collection=mugshots&token_env=MILVUS_TOKEN" ...

One collection per gallery. Each row holds the vector (float32, IP metric),
identity, source, thumbnail name and the thumbnail itself (base64 JPEG,
re-encoded to fit Milvus' 64 KiB VARCHAR), so a row travels whole. The
collection's properties hold the store's metadata (``c4s.info``: model hash,
model, aligner, dimension, counts, the committed generation).

Commits: a row is visible to searches while ``gen <= C and (removed == 0 or
removed > C)`` where ``C`` is the committed generation. ``save()`` stages
everything under ``C + 1`` (new rows inserted with ``gen = C + 1``, removed
ones marked ``removed = C + 1``, both invisible), then writes ``C + 1`` into
the collection's properties: that one write is the commit. Rows marked removed
are then deleted for real. A crash before the commit leaves staged rows that
no search sees; the next save clears them first. A save refuses if another
writer committed since the open. Searches use the collection's index
(``index_type``: FLAT is exact, the same top-k as the folder store).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from c4s_core import ComponentConfig, hookimpl
from c4s_core.errors import missing_dependency
from c4s_core.gallery.base import GalleryStore, Hit, IndexError_, check_rows, encode_thumbnail
from c4s_core.gallery.integrity import sha256_hex

FORMAT = "c4s-gallery-milvus"
FORMAT_VERSION = 1
PROP = "c4s.info"
THUMB_MAX_BYTES = 48_000  # base64 of it fits a 65,535-byte VARCHAR
MAX_LIMIT = 16_384  # Milvus' largest search limit
_FIELDS = ["pk", "identity", "source", "thumb"]


class MilvusConfig(ComponentConfig):
    collection: str = Field("c4s_gallery", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
                            description="Collection name (letters, digits, underscore).")
    index_type: Literal["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "AUTOINDEX"] = Field(
        "FLAT", description="Vector index built at create: FLAT (exact), IVF_FLAT/IVF_SQ8 (nlist, nprobe), HNSW (M, ef).")
    nlist: int = Field(1024, ge=1, le=65536, description="IVF lists (IVF_FLAT, IVF_SQ8).")
    nprobe: int = Field(16, ge=1, le=65536, description="IVF lists searched per query.")
    M: int = Field(32, ge=4, le=64, description="HNSW graph degree.")
    ef_construction: int = Field(200, ge=8, le=4096, description="HNSW build breadth.")
    ef: int = Field(128, ge=1, le=32768, description="HNSW search breadth (at least the search limit is used).")
    token_env: str | None = Field(None, description="Name of an environment variable holding the server's token "
                                  "(user:password or API key); never the token itself.")
    batch_rows: int = Field(2000, ge=1, le=100_000, description="Rows per insert request.")


def _quiet_pymilvus() -> None:
    """Milvus Lite has no server timestamp for iterators; pymilvus warns on every query about it."""
    import logging

    class _NoMvcc(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "mvccTs" not in record.getMessage()

    log = logging.getLogger("pymilvus.client.iterator.query_iterator")
    if not any(isinstance(f, _NoMvcc) for f in log.filters):
        log.addFilter(_NoMvcc())


def _client(location: str, cfg: MilvusConfig):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise missing_dependency("pymilvus", "milvus", "the milvus gallery store") from None
    _quiet_pymilvus()
    kw: dict[str, Any] = {}
    if cfg.token_env:
        token = os.environ.get(cfg.token_env)
        if not token:
            raise IndexError_(f"--store milvus: token_env={cfg.token_env} but that environment variable is not set")
        kw["token"] = token
    if location.startswith(("http://", "https://", "tcp://", "unix:")):
        uri = location
    else:
        path = Path(location)
        if path.suffix != ".db":
            raise IndexError_(f"--store milvus:{location}: a Milvus Lite location is a file ending in .db "
                              "(or give a server as http://HOST:19530)")
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = str(path.resolve())
    try:
        return MilvusClient(uri=uri, **kw), uri
    except Exception as err:  # pymilvus raises its own MilvusException and friends
        raise IndexError_(f"--store milvus:{location}: cannot connect ({err})") from None


class MilvusStore:
    """A Milvus collection (Milvus Lite file or a server URI): vectors, identities and thumbnails together."""

    name = "milvus"
    Config = MilvusConfig

    def __init__(self, config: MilvusConfig):
        self.config = config

    def create(self, location: str, *, model_hash: str, embedding_dim: int, dtype: str = "float32",
               model: dict[str, Any] | None = None, aligner: dict[str, Any] | None = None,
               overwrite: bool = False) -> MilvusGallery:
        if dtype != "float32":
            raise IndexError_(f"the milvus store keeps float32 vectors; got --dtype {dtype}")
        from pymilvus import DataType

        cfg = self.config
        client, uri = _client(location, cfg)
        name = cfg.collection
        generation = 0
        if client.has_collection(name):
            if not overwrite:
                raise IndexError_(f"milvus:{location} already holds collection {name!r}; add identities with "
                                  "`c4s match add`, or pass --overwrite to start again")
            old = _read_info(client, name, location)
            generation = int(old.get("generation", 0)) if old else 0
            client.drop_collection(name)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=int(embedding_dim))
        schema.add_field("identity", DataType.VARCHAR, max_length=1024)
        schema.add_field("source", DataType.VARCHAR, max_length=4096)
        schema.add_field("thumb", DataType.VARCHAR, max_length=64)
        schema.add_field("thumb_data", DataType.VARCHAR, max_length=65535)
        schema.add_field("gen", DataType.INT64)
        schema.add_field("removed", DataType.INT64)
        params = client.prepare_index_params()
        extra = ({"nlist": cfg.nlist} if cfg.index_type.startswith("IVF") else
                 {"M": cfg.M, "efConstruction": cfg.ef_construction} if cfg.index_type == "HNSW" else {})
        params.add_index("vec", index_type=cfg.index_type, metric_type="IP", params=extra)
        client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
        from c4s_core import __version__

        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_hash": model_hash,
                "model": dict(model or {}), "aligner": aligner, "embedding_dim": int(embedding_dim),
                "dtype": "float32", "generation": generation, "rows": 0, "identities": 0, "max_images": 0,
                "next_pk": 0, "index_type": cfg.index_type, "c4s_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        client.alter_collection_properties(name, properties={PROP: json.dumps(info)})
        return MilvusGallery(client, uri, location, cfg, info)

    def open(self, location: str, mmap: bool = False, verify: bool = False) -> MilvusGallery:
        client, uri = _client(location, self.config)
        name = self.config.collection
        if not client.has_collection(name):
            raise IndexError_(f"milvus:{location}: no collection {name!r} (a gallery index); create one with "
                              "`c4s match enroll --store ...`")
        info = _read_info(client, name, location)
        if info is None:
            raise IndexError_(f"milvus:{location}: collection {name!r} is not a c4s gallery (no {PROP} property)")
        client.load_collection(name)
        g = MilvusGallery(client, uri, location, self.config, info)
        if verify:
            g.verify(thumbnails=True)
        return g


def _read_info(client, name: str, location: str) -> dict[str, Any] | None:
    props = client.describe_collection(name).get("properties") or {}
    raw = props.get(PROP)
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError as err:
        raise IndexError_(f"milvus:{location} collection {name!r}: property {PROP} is not JSON ({err})") from None
    if info.get("format") != FORMAT:
        raise IndexError_(f"milvus:{location} collection {name!r}: not a c4s gallery (format {info.get('format')!r})")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise IndexError_(f"milvus:{location} collection {name!r}: format_version {info['format_version']}; "
                          f"this c4s reads up to {FORMAT_VERSION}: upgrade c4s")
    return info


def _quote(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(str(v)) for v in values) + "]"


class MilvusGallery(GalleryStore):
    """An opened Milvus gallery: the committed generation, plus changes staged until :meth:`save`."""

    kind = "milvus"

    def __init__(self, client, uri: str, location: str, config: MilvusConfig, info: dict[str, Any]):
        self.client, self.uri, self.config, self.info = client, uri, config, info
        self.collection = config.collection
        self.location = f"milvus:{location}?collection={config.collection}"
        self._opened_generation = int(info.get("generation", 0))
        self._staged: list[dict[str, Any]] = []  # rows to insert at save
        self._removing: set[str] = set()  # committed identities whose rows save marks removed
        self._thumbs: dict[str, bytes] = {}  # put_thumbnail's images, until save

    def close(self) -> None:
        self.client.close()

    # -- reads of the committed generation --------------------------------------------
    def _live(self, extra: str = "") -> str:
        c = int(self.info.get("generation", 0))
        expr = f"gen <= {c} and (removed == 0 or removed > {c})"
        return f"({expr}) and ({extra})" if extra else expr

    def _query(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Live rows matching ``expr``: one query, or an iterator when there are more than a query returns."""
        rows = self.client.query(self.collection, filter=self._live(expr), output_fields=fields, limit=MAX_LIMIT)
        if len(rows) < MAX_LIMIT:
            return list(rows)
        out, it = [], self.client.query_iterator(self.collection, batch_size=4096, filter=self._live(expr),
                                                 output_fields=fields)
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                out += batch
        finally:
            it.close()
        return out

    def _count(self, expr: str) -> int:
        res = self.client.query(self.collection, filter=self._live(expr), output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def committed_generation(self) -> int:
        info = _read_info(self.client, self.collection, self.location)
        return int((info or {}).get("generation", 0))

    def _committed_ids(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._query("", ["identity"]):
            counts[r["identity"]] = counts.get(r["identity"], 0) + 1
        return counts

    def _present(self, identities: Iterable[str]) -> set[str]:
        names, found = sorted(set(identities)), set()
        for i in range(0, len(names), 1000):
            found |= {r["identity"] for r in self._query(f"identity in {_quote(names[i:i + 1000])}", ["identity"])}
        return found

    def __len__(self) -> int:
        return int(self.info.get("rows", 0))

    def identities(self) -> list[str]:
        ids = set(self._committed_ids()) - self._removing
        return sorted(ids | {r["identity"] for r in self._staged})

    def count_thumbnails(self) -> int:
        return self._count('thumb != ""')

    def count_identities(self) -> int:
        return int(self.info.get("identities", 0))  # kept by every commit: no scan of the collection

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "index_type": self.info.get("index_type")}

    def images_of(self, identity: str) -> list[dict[str, Any]] | None:
        rows = self._query(f"identity == {json.dumps(identity)}", _FIELDS)
        if not rows:
            return None
        return [{"source": r["source"], "thumb": r["thumb"] or None, "row": int(r["pk"])}
                for r in sorted(rows, key=lambda r: r["pk"])]

    def has_thumbnail(self, name: str) -> bool:
        return self._count(f"thumb == {json.dumps(str(name))}") > 0

    # -- thumbnails -------------------------------------------------------------------
    def put_thumbnail(self, image: np.ndarray, max_side: int = 512, quality: int = 90) -> str:
        name, data = encode_thumbnail(image, max_side, quality, max_bytes=THUMB_MAX_BYTES)
        self._thumbs[name] = data
        return name

    def _check_thumb(self, name: str, b64: str) -> bytes:
        try:
            data = base64.b64decode(b64, validate=True)
        except ValueError:
            data = b""
        if sha256_hex(data)[:32] != name[:32]:
            raise IndexError_(f"{self.location}: thumbnail {name} is damaged (its content does not match its "
                              "name); re-enroll that identity")
        return data

    def read_thumbnail(self, name: str) -> bytes:
        rows = self._query(f"thumb == {json.dumps(str(name))}", ["thumb", "thumb_data"])
        if not rows:
            raise IndexError_(f"{name!r} is not a thumbnail name of {self.location}")
        return self._check_thumb(name, rows[0]["thumb_data"])

    def verify(self, thumbnails: bool = True) -> None:
        if thumbnails:
            self.verify_thumbnails()

    def verify_thumbnails(self, rows: Iterable[int] | None = None) -> None:
        expr = 'thumb != ""' if rows is None else f"pk in [{', '.join(str(int(r)) for r in rows)}]"
        if rows is not None and expr == "pk in []":
            return
        for r in self._query(expr, ["thumb", "thumb_data"]):
            if r["thumb"]:
                self._check_thumb(r["thumb"], r["thumb_data"])

    # -- changes (staged until save) --------------------------------------------------
    def add(self, identities: Sequence[str], embeddings: np.ndarray, sources: Sequence[str] | None = None,
            replace: bool = False, thumbnails: Sequence[str | None] | None = None) -> dict[str, int]:
        emb, sources, thumbs = check_rows(identities, embeddings, int(self.info["embedding_dim"]), sources, thumbnails)
        missing = sorted({t for t in thumbs if t and t not in self._thumbs})
        if missing:
            raise IndexError_(f"add: thumbnails {missing[:3]} were not stored by put_thumbnail() on this store")
        staged = {r["identity"] for r in self._staged}
        enrolled = (self._present(identities) - self._removing) | staged
        present = self._check_new(identities, replace, enrolled)
        replaced = self.remove(present) if present else 0
        self._staged += [{"vec": e, "identity": i, "source": s, "thumb": t or ""}
                         for e, i, s, t in zip(emb, identities, sources, thumbs, strict=True)]
        return {"rows_added": len(emb), "identities_added": len(set(identities)), "rows_replaced": replaced}

    def remove(self, identities: Sequence[str], missing_ok: bool = False) -> int:
        gone = set(identities)
        staged = [r for r in self._staged if r["identity"] in gone]
        committed = self._present(gone) - self._removing
        self._check_known(identities, missing_ok, committed | {r["identity"] for r in staged})
        n = self._count(f"identity in {_quote(sorted(committed))}") if committed else 0
        self._staged = [r for r in self._staged if r["identity"] not in gone]
        self._removing |= committed
        return n + len(staged)

    def save(self) -> str:
        """Stage under generation C + 1, commit it in one property write, then delete removed rows."""
        cur = _read_info(self.client, self.collection, self.location) or {}
        c = int(cur.get("generation", 0))
        if c != self._opened_generation:
            raise IndexError_(f"{self.location} was changed by another process since it was opened "
                              f"(generation {c}, opened {self._opened_generation}); run the command again")
        nxt, name = c + 1, self.collection
        # what a crashed save left: staged rows (never visible) and marks of removal (not committed)
        self.client.delete(name, filter=f"gen > {c}")
        self._mark(f"removed > {c}", 0)
        removed_rows = 0
        if self._removing:
            names = sorted(self._removing)
            for i in range(0, len(names), 1000):
                removed_rows += self._mark(f"identity in {_quote(names[i:i + 1000])} and removed == 0 "
                                           f"and gen <= {c}", nxt)
        pk = int(cur.get("next_pk", 0))
        per_id: dict[str, int] = {}
        batch: list[dict[str, Any]] = []
        for r in self._staged:
            t = r["thumb"]
            batch.append({"pk": pk, "vec": np.asarray(r["vec"], np.float32).tolist(), "identity": r["identity"],
                          "source": r["source"][:4096], "thumb": t,
                          "thumb_data": base64.b64encode(self._thumbs[t]).decode() if t else "",
                          "gen": nxt, "removed": 0})
            per_id[r["identity"]] = per_id.get(r["identity"], 0) + 1
            pk += 1
            if len(batch) >= self.config.batch_rows:
                self.client.insert(name, batch)
                batch = []
        if batch:
            self.client.insert(name, batch)
        info = dict(cur)
        info.update(generation=nxt, next_pk=pk, rows=int(cur.get("rows", 0)) - removed_rows + len(self._staged),
                    identities=int(cur.get("identities", 0)) - len(self._removing) + len(per_id),
                    max_images=max([int(cur.get("max_images", 0)), *per_id.values()]),
                    updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.client.flush(name)
        self.client.alter_collection_properties(name, properties={PROP: json.dumps(info)})  # the commit
        self.client.delete(name, filter=f"removed != 0 and removed <= {nxt}")  # removals are real
        self.info, self._opened_generation = info, nxt
        self._staged, self._removing, self._thumbs = [], set(), {}
        return self.location

    def _mark(self, expr: str, value: int) -> int:
        """Set ``removed = value`` on the rows matching ``expr`` (an upsert of each whole row); ``expr``
        must stop matching a row once it is marked, so the loop ends."""
        n = 0
        while True:
            rows = self.client.query(self.collection, filter=expr, output_fields=["*"], limit=self.config.batch_rows)
            if not rows:
                return n
            for r in rows:
                r["removed"] = value
                r["vec"] = [float(v) for v in r["vec"]]
            self.client.upsert(self.collection, list(rows))
            n += len(rows)

    # -- search -----------------------------------------------------------------------
    def search(self, queries: np.ndarray, top_k: int = 10, backend: str = "exact", **options) -> list[list[Hit]]:
        """Top-``top_k`` identities per query with the collection's index (FLAT: exact)."""
        if backend != "exact":
            raise IndexError_(f"search backend {backend!r}: the milvus store searches with its collection's index "
                              f"({self.info.get('index_type')}); --backend applies to folder stores")
        q = self._check_queries(queries, top_k)
        if len(self) == 0:
            return [[] for _ in range(len(q))]
        limit = min(MAX_LIMIT, len(self), top_k * max(1, int(self.info.get("max_images", 1))))
        cfg = self.config
        params: dict[str, Any] = {"metric_type": "IP", "params": {}}
        if cfg.index_type.startswith("IVF"):
            params["params"] = {"nprobe": cfg.nprobe}
        elif cfg.index_type == "HNSW":
            params["params"] = {"ef": max(cfg.ef, limit)}
        res = self.client.search(self.collection, data=[v.tolist() for v in q], limit=limit, filter=self._live(),
                                 output_fields=["identity", "source", "thumb"], search_params=params)
        out = []
        for hits_q in res:
            hits, seen = [], set()
            for h in sorted(hits_q, key=lambda h: (-float(h["distance"]), int(h["pk"]))):
                e = h["entity"]
                if e["identity"] in seen:
                    continue
                seen.add(e["identity"])
                hits.append(Hit(e["identity"], float(h["distance"]), e["source"], int(h["pk"]), e["thumb"] or None))
                if len(hits) == top_k:
                    break
            out.append(hits)
        return out


@hookimpl
def register_gallery_stores(register):
    register(MilvusStore)
