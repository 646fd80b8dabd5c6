"""The activation index (issue 39): every image x every unit of chosen layers, kept, so that another k, another
class, another unit's images or the units an image drives are a query, not another pass over the data.

`build_index` is one streaming pass (the atlas's rule, Fig. 2: each unit's maximum over its rectified map and the
first position of it in row-major order) that writes Parquet shards: one row per image with its id (`image`, the
index's own number), its source and index in it, its path, label and predicted class, and per layer two
fixed-size lists over the layer's units - the maxima (`<layer>:value`, float16 or float32) and their positions
(`<layer>:pos`, y * W + x as uint16): 4 or 6 bytes per image and unit before compression. A manifest says what is
where. A killed run resumes at the first unfinished shard; another `--data` appends its shards.

`ActivationIndex` (`zfnet.open_index`) reads the shards with DuckDB through two views, `images(image, source,
index, path, label, predicted)` and `units(layer, unit, image, value, y, x)`, and answers the common questions
directly from the lists (`top`, `units_of`) as Arrow tables.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.distributed as torch_dist

from .. import data as zdata
from ..errors import UsageError
from ..io import atomic_path, atomic_write_json
from ..layers import capture, features, read_maps, resolve_layer
from ..methods.atlas import Scan, TopK, default_layers
from ..provenance import environment
from ..readback import parse_json, read_json
from ..runtime import Dist, eval_mode, model_device
from ..settings import Run, Settings, knob
from ..weights import Opened

NEEDS = "the activation index needs pyarrow and duckdb: pip install 'zfnet[index]'"
MANIFEST = {"format": int, "layers": [str], "shapes": dict, "dtype": str, "sources": [dict], "model": dict}
FORMAT = 1


@dataclass(frozen=True)
class IndexSettings(Settings):
    """What `zfnet index` records (issue 39)."""

    method: ClassVar[str] = "index"

    layers: tuple[str, ...] | None = knob(None, "layers indexed (none: the atlas's default layers)")
    dtype: Literal["float16", "float32"] = knob(
        "float16", "the maxima's type: float16 (4 bytes an image and unit with the position) or float32 (6)"
    )
    shard_images: int = knob(8192, "images per Parquet shard (a killed run resumes at its first unfinished shard)",
                             low=1)  # fmt: skip
    limit: int | None = knob(None, "images indexed (none: the whole split)", low=1)


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(NEEDS) from None
    return pa, pq


def encoding(table) -> dict:
    """How a shard is written: zstd at level 1 (a third faster than level 3, 10% larger); a dictionary for the
    paths only and statistics for the per-image columns only - for the units' lists of 2-byte values (float16
    maxima, positions) a dictionary and min/max pages cost a third of the writing and gain nothing on read."""
    small = [n for n in table.column_names if ":" not in n]
    return {"compression": "zstd", "compression_level": 1, "use_dictionary": ["path"], "write_statistics": small}


class Store:
    """Where an index lives: a local folder (files replaced atomically), or any pyarrow file-system URI
    (file://, s3://, gs://, hdfs://...: each file written whole, then moved to its name)."""

    def __init__(self, where: str) -> None:
        from pyarrow import fs

        self.uri = "://" in where
        if self.uri:
            try:
                self.fs, self.root = fs.FileSystem.from_uri(where)
            except (ValueError, OSError) as e:
                raise UsageError(f"cannot open {where!r} as a file system ({str(e).splitlines()[0]}); pass a folder "
                                 "or a URI pyarrow knows (file://, s3://, gs://, hdfs://)") from None  # fmt: skip
        else:
            self.fs, self.root = fs.LocalFileSystem(), os.path.abspath(where)
        self.where = where

    def path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self.path(rel)).type != fs.FileType.NotFound

    def makedirs(self, rel: str) -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def write_table(self, rel: str, table, pq) -> None:
        if not self.uri:
            with atomic_path(self.path(rel)) as tmp:
                pq.write_table(table, tmp, **encoding(table))
            return
        pq.write_table(table, self.path(rel + ".partial"), filesystem=self.fs, **encoding(table))
        self.fs.move(self.path(rel + ".partial"), self.path(rel))

    def write_json(self, rel: str, obj: dict) -> None:
        if not self.uri:
            atomic_write_json(self.path(rel), obj)
            return
        with self.fs.open_output_stream(self.path(rel + ".partial")) as f:
            f.write((json.dumps(obj, indent=1) + "\n").encode())
        self.fs.move(self.path(rel + ".partial"), self.path(rel))

    def read_json(self, rel: str, fix: str) -> dict:
        if not self.uri:
            return read_json(self.path(rel), MANIFEST, fix=fix)
        with self.fs.open_input_stream(self.path(rel)) as f:
            text = f.read().decode("utf-8", errors="replace")
        return parse_json(text, self.where + "/" + rel, MANIFEST, fix)

    def rows(self, rel: str, pq) -> int:
        with self.fs.open_input_file(self.path(rel)) as f:
            return pq.ParquetFile(f).metadata.num_rows


def layer_shapes(model, pp, layers: list[str]) -> dict[str, tuple[int, ...]]:
    """Each layer's maps' shape without the batch (C x H x W, or C), from one forward of zeros."""
    x = torch.zeros(1, pp.channels, pp.input_size, pp.input_size, device=model_device(model))
    with torch.no_grad(), eval_mode(model):
        return {n: tuple(m.shape[1:]) for n, m in features(model, x, layers).items()}


def maxima(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per image and unit, the maximum of its map and the first position of it in row-major order (the atlas's
    rule, `zfnet.methods.atlas.TopK.update`); fc layers: the value itself and no position."""
    if maps.dim() == 2:
        return maps, None
    best, where = maps.flatten(2).max(2)
    return best, where


def build_index(
    opened: Opened, dataset: zdata.ImageSet, out: str, s: IndexSettings, run: Run, dist: Dist | None = None
) -> dict:
    """Index `dataset` (its first `s.limit` images) into `out`: shards written as they fill, the manifest after
    each; returns the manifest. Under torchrun (`dist`) process r writes shards r, r + world, ...: the same
    shards, row for row, as one process writes; process 0 keeps the manifest."""
    pa, pq = _arrow()
    dist = dist or Dist()
    model, pp = opened.model, opened.preprocess
    layers, shapes = _layers(model, pp, s)
    store = Store(out)
    if dist.main:
        store.makedirs("shards")
        manifest = _manifest(store, opened, layers, shapes, s)
        source = _source(manifest, dataset, s)
        store.write_json("manifest.json", manifest)
    _barrier(dist)  # the others read the manifest process 0 wrote: the same source, numbers and shards
    if not dist.main:
        manifest = store.read_json("manifest.json", fix="rerun the index")
        source = _source(manifest, dataset, s)
    n = source["images"]
    started = time.perf_counter()
    # a shard is encoded and written on a thread while the next one's images go through the model (pyarrow lets go
    # of the GIL); the manifest follows each write
    with ThreadPoolExecutor(1) as writer:
        pending = None
        for j, lo in enumerate(range(0, n, s.shard_images)):
            name = f"shards/{source['number']:03d}-{j:05d}.parquet"
            if j % dist.world != dist.rank or store.exists(name):
                continue  # another process's, or finished before (a resumed run): a shard is there once complete
            idx = list(range(lo, min(n, lo + s.shard_images)))
            table = _shard(model, pp, dataset, idx, layers, source, s, run, pa)
            _written(pending, store, manifest, source, s, pq, dataset, dist)
            pending = writer.submit(store.write_table, name, table, pq)
        _written(pending, store, manifest, source, s, pq, dataset, dist)
    _barrier(dist)  # every process's shards are written
    if dist.main:
        _found_shards(store, source, s, pq)
        source["complete"] = True
        source["seconds"] = source.get("seconds", 0.0) + time.perf_counter() - started
        manifest["provenance"] = environment(run.device)
        store.write_json("manifest.json", manifest)
    return manifest


def _layers(model, pp, s: IndexSettings) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """The layers indexed (the atlas's default ones unless named) and their maps' shapes; refused in one line when
    a map has more positions than uint16 holds."""
    shape = (pp.channels, pp.input_size, pp.input_size)
    layers = list(s.layers) if s.layers else default_layers(model, shape)
    for layer in layers:
        resolve_layer(model, layer)
    shapes = layer_shapes(model, pp, layers)
    for layer, sh in shapes.items():
        if len(sh) == 3 and sh[1] * sh[2] > 65536:
            raise UsageError(f"layer {layer}'s maps are {sh[1]}x{sh[2]}: positions past 65,536 do not fit uint16")
    return layers, shapes


def _written(pending, store: Store, manifest: dict, source: dict, s: IndexSettings, pq, dataset, dist: Dist) -> None:
    """Wait for the shard being written (its error, raised here), then list it in the manifest (process 0)."""
    if pending is None:
        return
    pending.result()
    if dist.main:
        _found_shards(store, source, s, pq)
        manifest["skipped"] = dataset.skipped_report()
        store.write_json("manifest.json", manifest)


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch_dist.barrier()


def _found_shards(store: Store, source: dict, s: IndexSettings, pq) -> None:
    """The source's finished shards, from the files there (a shard file exists once it is complete)."""
    found = []
    for j, lo in enumerate(range(0, source["images"], s.shard_images)):
        name = f"shards/{source['number']:03d}-{j:05d}.parquet"
        if store.exists(name):
            rows = store.rows(name, pq)
            found.append(
                {"file": name, "rows": rows, "first": lo, "last": min(source["images"], lo + s.shard_images) - 1}
            )
    source["shards"] = found


def _manifest(store: Store, opened: Opened, layers: list[str], shapes: dict, s: IndexSettings) -> dict:
    """The folder's manifest: a new one, or the one there when it indexes the same model, layers and type."""
    out = store.where
    model = opened.info()
    want = {"format": FORMAT, "model": model, "preprocess": opened.preprocess.to_dict(), "layers": layers,
            "shapes": {k: list(v) for k, v in shapes.items()}, "dtype": s.dtype}  # fmt: skip
    if not store.exists("manifest.json"):
        return {**want, "sources": [], "skipped": []}
    have = store.read_json("manifest.json", fix=f"remove {out} (a damaged index) and index again")
    for key in ("format", "layers", "dtype", "shapes"):
        if have.get(key) != want[key]:
            raise UsageError(
                f"{out} holds an index of another {key} ({have.get(key)!r}, asked {want[key]!r}); "
                "pass another --out or the same settings"
            )
    if have.get("model", {}).get("weights_sha256") != model.get("weights_sha256") or have.get("model", {}).get(
        "name"
    ) != model.get("name"):
        raise UsageError(f"{out} holds an index of another model; pass another --out")
    return have


def _source(manifest: dict, dataset: zdata.ImageSet, s: IndexSettings) -> dict:
    """The manifest's entry for this data (resumed when it is there), else a new one after the others."""
    n = len(dataset) if s.limit is None else min(s.limit, len(dataset))
    key = {"spec": dataset.spec, "split": dataset.split, "images": n, "shard_images": s.shard_images}
    for src in manifest["sources"]:
        if all(src.get(k) == v for k, v in key.items()):
            return src
        if (src["spec"], src["split"]) == (key["spec"], key["split"]):
            raise UsageError(
                f"this index holds {src['spec']} split {src['split']!r} already ({src['images']} images, shards of "
                f"{src['shard_images']}); index it with the same --limit and --shard-images, or into another --out"
            )
    first = sum(src["images"] for src in manifest["sources"])
    src = {**key, "number": len(manifest["sources"]), "first_image": first, "name": dataset.name,
           "classes": list(dataset.classes), "shards": [], "complete": False}  # fmt: skip
    manifest["sources"].append(src)
    return src


def _shard(model, pp, dataset, idx: list[int], layers: list[str], source: dict, s: IndexSettings, run: Run, pa):
    """One shard's rows: the images of `idx` through the model (one forward each, the layers' maps captured)."""
    device = run.device if isinstance(run.device, torch.device) else model_device(model)
    dtype = np.float16 if s.dtype == "float16" else np.float32
    cols: dict[str, list] = {k: [] for k in ("index", "label", "predicted")}
    vals: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    poss: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    chunks = zdata.chunked(idx, run.batch_size or max(1, min(256, (64 * 224 * 224) // (pp.input_size**2))))
    desc = f"index {dataset.name} {idx[0]}-{idx[-1]}"
    with torch.no_grad(), eval_mode(model):
        for bases, labels, got in zdata.batches(dataset, chunks, run.workers, run.progress, desc):
            x = pp.eval_input(bases).to(device)
            with capture(model, layers, x, stop=False, reduce=maxima) as found:  # reduced as made: no map copied
                logits = model(x)
            cols["index"].append(got.numpy())
            cols["label"].append(labels.numpy().astype(np.int32))
            cols["predicted"].append(logits.argmax(1).cpu().numpy().astype(np.int32))
            for layer in layers:
                best, where = found[layer]
                if s.dtype == "float16" and bool((best.abs() > F16_MAX).any()):
                    raise UsageError(f"{layer}'s maxima reach {float(best.abs().max()):.4g}, beyond float16's "
                                     f"{F16_MAX:g}; index with --dtype float32 (into a new --out)")  # fmt: skip
                vals[layer].append(best.to(torch.float16 if s.dtype == "float16" else torch.float32).cpu().numpy())
                if where is not None:
                    poss[layer].append(where.to(torch.int32).cpu().numpy().astype(np.uint16))
    index = np.concatenate(cols["index"]) if cols["index"] else np.zeros(0, np.int64)
    table = {
        "image": pa.array(source["first_image"] + index, pa.int64()),
        "source": pa.array(np.full(len(index), source["number"], np.int16)),
        "index": pa.array(index, pa.int64()),
        "path": pa.array([dataset.image_id(int(i)) for i in index], pa.string()),
        "label": pa.array(np.concatenate(cols["label"]) if cols["label"] else [], pa.int32()),
        "predicted": pa.array(np.concatenate(cols["predicted"]) if cols["predicted"] else [], pa.int32()),
    }
    arrow_type = pa.float16() if s.dtype == "float16" else pa.float32()
    for layer in layers:
        v = np.concatenate(vals[layer]) if vals[layer] else np.zeros((0, 1), dtype)
        c = v.shape[1]
        table[f"{layer}:value"] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel(), arrow_type), c)
        if poss[layer]:
            p = np.concatenate(poss[layer])
            table[f"{layer}:pos"] = pa.FixedSizeListArray.from_arrays(pa.array(p.ravel(), pa.uint16()), c)
    return pa.table(table)


# --- reading it -------------------------------------------------------------------------------------------


class ActivationIndex:
    """An index folder opened for queries (`zfnet.open_index`): DuckDB over its shards, the views `images` and
    `units`, and `top`, `units_of` and `sql` returning Arrow tables."""

    def __init__(self, path: str) -> None:
        try:
            import duckdb
        except ImportError:
            raise UsageError(NEEDS) from None
        store = Store(path)
        if not store.exists("manifest.json"):
            raise UsageError(f"{path!r} holds no index (manifest.json); make one with `zfnet index --out {path}`")
        self.path = path
        self.manifest = store.read_json("manifest.json", fix=f"remove {path} (a damaged index) and index again")
        self.files = [store.path(sh["file"]) for src in self.manifest["sources"] for sh in src["shards"]]
        if not self.files:
            raise UsageError(f"the index {path!r} has no finished shard yet; run `zfnet index` to the end")
        self.layers: list[str] = self.manifest["layers"]
        self.shapes = {k: tuple(v) for k, v in self.manifest["shapes"].items()}
        self.con = duckdb.connect()
        if store.uri:  # any pyarrow file system: DuckDB scans it as an Arrow dataset
            import pyarrow.dataset as pds

            self.con.register("shard_data", pds.dataset(self.files, filesystem=store.fs, format="parquet"))
            self.con.execute("CREATE VIEW shards AS SELECT * FROM shard_data")
        else:
            files = ", ".join("'" + f.replace("'", "''") + "'" for f in self.files)
            self.con.execute(f"CREATE VIEW shards AS SELECT * FROM read_parquet([{files}])")
        self.con.execute("CREATE VIEW images AS SELECT image, source, index, path, label, predicted FROM shards")
        parts = []
        for layer in self.layers:
            c, col = self.shapes[layer][0], _q(f"{layer}:value")
            if len(self.shapes[layer]) == 3:
                w, pos = self.shapes[layer][2], _q(f"{layer}:pos")
                yx = f"unnest({pos}) // {w} AS y, unnest({pos}) % {w} AS x"
            else:
                yx = "NULL::INTEGER AS y, NULL::INTEGER AS x"
            parts.append(f"SELECT '{layer}' AS layer, unnest(range({c})) AS unit, image, unnest({col}) AS value, {yx} "
                         "FROM shards")  # fmt: skip
        self.con.execute("CREATE VIEW units AS " + " UNION ALL ".join(parts))

    def table(self, sql: str):
        """`sql`'s result as an Arrow table (DuckDB 2's `to_arrow_table`, 1's `arrow`)."""
        rel = self.con.sql(sql)
        if rel is None:  # a statement without rows
            raise UsageError("the query returned no table; ask with SELECT")
        fetch = getattr(rel, "to_arrow_table", None) or getattr(rel, "arrow")  # noqa: B009
        return fetch()

    def _layer(self, layer: str, unit: int | None = None) -> tuple[int, ...]:
        if layer not in self.shapes:
            raise UsageError(f"layer {layer!r} is not in this index; it has {', '.join(self.layers)}")
        shape = self.shapes[layer]
        if unit is not None and not 0 <= unit < shape[0]:
            raise UsageError(f"unit {unit} does not exist in {layer} ({shape[0]} units: 0..{shape[0] - 1})")
        return shape

    def top(self, layer: str, unit: int, k: int = 9, label: int | None = None, fired: bool = True, offset: int = 0):
        """The k images where `unit` of `layer` is strongest (ties to the lower image, as the atlas), with the
        value and position; `label`: within that class; `fired`: only where it is above 0 (the atlas's rule);
        `offset`: after that many (pages)."""
        shape = self._layer(layer, unit)
        value = f"{_q(layer + ':value')}[{unit + 1}]"
        where = [f"{value} > 0"] if fired else []
        if label is not None:
            where.append(f"label = {int(label)}")
        yx = (f"{_q(layer + ':pos')}[{unit + 1}] // {shape[2]} AS y, {_q(layer + ':pos')}[{unit + 1}] % {shape[2]} AS x"
              if len(shape) == 3 else "NULL AS y, NULL AS x")  # fmt: skip
        cond = "WHERE " + " AND ".join(where) if where else ""
        sql = (f"SELECT image, source, index, path, label, predicted, {value} AS value, {yx} FROM shards {cond} "
               f"ORDER BY value DESC, image LIMIT {int(k)} OFFSET {int(offset)}")  # fmt: skip
        return self.table(sql)

    def units_of(self, image: int, k: int = 10, layer: str | None = None):
        """The k units of each layer (or of `layer`) that fire most for `image` (the index's image number)."""
        if layer is not None:
            self._layer(layer)
        only = f"AND layer = '{layer}'" if layer else ""
        sql = ("SELECT layer, unit, value, y, x FROM (SELECT *, row_number() OVER (PARTITION BY layer ORDER BY value "
               f"DESC, unit) AS rank FROM units WHERE image = {int(image)} {only}) WHERE rank <= {int(k)} "
               "ORDER BY layer, rank")  # fmt: skip
        return self.table(sql)

    def values(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """The images' numbers in order (N) and their maxima of `layer`'s units (N x C float32)."""
        self._layer(layer)
        t = self.table(f"SELECT image, {_q(layer + ':value')} AS v FROM shards ORDER BY image")
        v = np.asarray(t.column("v").combine_chunks().flatten(), dtype=np.float32).reshape(t.num_rows, -1)
        return np.asarray(t.column("image")), v

    def sql(self, text: str):
        """Any SQL over the views `images` and `units` (and `shards`, the raw rows), as an Arrow table."""
        import duckdb

        try:
            return self.table(text)
        except duckdb.Error as e:
            line = (str(e).splitlines() or ["?"])[0]
            raise UsageError(f"the query failed: {line}; the views are images(image, source, index, path, label, "
                             "predicted) and units(layer, unit, image, value, y, x)") from None  # fmt: skip


F16_MAX = 65504.0  # float16's largest finite value: a maximum above it would be stored as infinity


def index_note(dtype: str) -> str:
    """What an atlas drawn from an index of `dtype` values rests on, for its captions ('' for float32: exact)."""
    if dtype != "float16":
        return ""
    return (
        "top-k read from a float16 index: values rounded to 3 significant digits, so images within that of each "
        "other may rank in another order than a float32 scan (rebuild with --dtype float32 for exact ranks)"
    )


def scan_from_index(idx: ActivationIndex, dataset: zdata.ImageSet, model, layers: list[str], k: int,
                    per_class: int = 0) -> Scan:  # fmt: skip
    """The atlas's scan (Fig. 2's top-k per unit, ties to the lower image; per-class top-k) read from the index
    instead of a pass over `dataset`, whose images the index must hold (same data and split, at least as many)."""
    t0 = time.perf_counter()
    src = next((s for s in idx.manifest["sources"] if (s["spec"], s["split"]) == (dataset.spec, dataset.split)), None)
    if src is None or not src.get("complete") or src["images"] < len(dataset):
        raise UsageError(f"the index {idx.path} does not hold {dataset.spec} split {dataset.split!r} "
                         f"({len(dataset)} images); index them first (zfnet index --data {dataset.spec})")  # fmt: skip
    for layer in layers:
        idx._layer(layer)
    pp = dataset.preprocess
    probe = torch.zeros(1, pp.channels, pp.input_size, pp.input_size, device=model_device(model))
    maps = read_maps(model, layers, probe)
    top: dict[str, TopK] = {}
    classes: dict[str, dict[int, TopK]] = {}
    for layer in layers:
        top[layer] = _tables(idx, layer, src["number"], len(dataset), k, None)[None]
        if per_class:
            classes[layer] = _tables(idx, layer, src["number"], len(dataset), per_class, len(dataset.classes))
        if maps.get(layer, {}).get("rectified"):
            top[layer] = top[layer].fired()
            classes[layer] = {c: t.fired() for c, t in classes.get(layer, {}).items()}
    n = idx.table(f"SELECT count(*) AS n FROM images WHERE source = {src['number']} AND index < {len(dataset)}")
    shapes = {layer: idx.shapes[layer] for layer in layers}
    images = int(n.column("n")[0].as_py())
    return Scan(top, shapes, images, time.perf_counter() - t0, per_class={k_: v for k_, v in classes.items() if v},
                maps=maps)  # fmt: skip


def _tables(idx: ActivationIndex, layer: str, source: int, n: int, k: int, classes: int | None) -> dict:
    """Each unit's top-k over the source's first n images (per class when `classes`): {None or class: TopK}."""
    shape = idx.shapes[layer]
    c = shape[0]
    pos = f"unnest({_q(layer + ':pos')})" if len(shape) == 3 else "NULL::INTEGER"
    part = "unit, label" if classes else "unit"
    sql = (f"SELECT unit, label, image, value, pos, row_number() OVER (PARTITION BY {part} ORDER BY value DESC, "
           f"image) AS rank FROM (SELECT unnest(range({c})) AS unit, label, index AS image, "
           f"unnest({_q(layer + ':value')}) AS value, {pos} AS pos FROM shards WHERE source = {source} "
           f"AND index < {n}) QUALIFY rank <= {k}")  # fmt: skip
    t = idx.table(sql)
    cols = {name: np.asarray(t.column(name).to_numpy(zero_copy_only=False)) for name in ("unit", "label", "image",
                                                                                          "value", "rank")}  # fmt: skip
    at = np.asarray(t.column("pos").to_numpy(zero_copy_only=False)) if len(shape) == 3 else None
    out: dict = {}
    for key in [None] if not classes else range(classes):
        tk = TopK.empty(k, c)
        sel = np.arange(t.num_rows) if key is None else np.nonzero(cols["label"] == key)[0]
        rank, unit = torch.from_numpy(cols["rank"][sel] - 1).long(), torch.from_numpy(cols["unit"][sel]).long()
        tk.values[rank, unit] = torch.from_numpy(cols["value"][sel].astype(np.float32))
        tk.images[rank, unit] = torch.from_numpy(cols["image"][sel]).long()
        if at is not None:
            where = torch.from_numpy(at[sel].astype(np.int64))
            tk.ys[rank, unit], tk.xs[rank, unit] = where // shape[2], where % shape[2]
        out[key] = tk
    return out


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_index(path: str) -> ActivationIndex:
    """Issue 39: an index folder (`zfnet index --out PATH`) opened for queries."""
    return ActivationIndex(path)


__all__ = [
    "ActivationIndex",
    "IndexSettings",
    "Store",
    "build_index",
    "layer_shapes",
    "maxima",
    "open_index",
    "index_note",
    "scan_from_index",
]
