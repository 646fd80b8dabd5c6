"""Issue 22: nothing the user had is ever lost, and files read back are validated.

Each numbered reproduction of the issue is a test here: output paths that are inputs or someone else's folder,
refused and failed reruns that must leave the earlier result byte for byte, a full disk (a real small tmpfs in a
private mount namespace), a scan killed over unreadable files, damaged result files, unbounded sizes, odd paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO, run_cli
from PIL import Image

from zfnet.outputs import MARKER, sibling

ATLAS = ["atlas", "--pretrained", "--data", "fashion-mnist-mini", "--limit", "120", "--layers", "conv1,conv5"]
ATLAS += ["--workers", "0", "--max-maps", "4", "--no-progress"]
OCC = ["occlusion", "--pretrained", "--data", "fashion-mnist-mini", "--split", "test", "--window", "8"]


def digest(folder) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def one_line(r, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


# --- 1, 5: an output is never an input ---------------------------------------------------------------------


def test_project_never_overwrites_its_image(photos):
    x = photos / "p0.png"
    before = x.read_bytes()
    r = run_cli("project", "--pretrained", "--image", str(x), "--layer", "conv3", "--channel", "0", "--out", str(x))
    one_line(r, "--image", "itself")
    assert x.read_bytes() == before


@pytest.mark.parametrize("where", ["same", "inside"])
def test_atlas_out_is_never_the_data(photos, where):
    before = digest(photos)
    out = photos if where == "same" else photos / "atlas"
    r = run_cli(*ATLAS[:2], "--data", f"folder:{photos}", "--split", "all", "--out", str(out))
    one_line(r, "--data", "itself" if where == "same" else "inside")
    assert digest(photos) == before and not (photos / "atlas").exists()


def test_no_output_into_the_package():
    import zfnet

    pkg = os.path.dirname(zfnet.__file__)
    before = sorted(os.listdir(pkg))
    r = run_cli(*ATLAS, "--out", pkg)
    one_line(r, "zfnet package")
    r = run_cli(*ATLAS, "--out", os.path.join(pkg, "site"))
    one_line(r, "zfnet package")
    assert sorted(os.listdir(pkg)) == before


# --- 2: a folder zfnet did not make -------------------------------------------------------------------------


def test_atlas_refuses_a_folder_it_did_not_make(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>my page</p>")
    (site / "style.css").write_text("p {}")
    before = digest(site)
    one_line(run_cli(*ATLAS, "--out", str(site)), "did not make", "not empty")
    assert digest(site) == before
    # nor a folder another zfnet command made
    occ = tmp_path / "occ"
    assert run_cli(*OCC, "--index", "0", "--out", str(occ)).returncode == 0
    one_line(run_cli(*ATLAS, "--out", str(occ)), "zfnet occlusion")


# --- 4: a refused or smaller rerun ---------------------------------------------------------------------------


def test_refused_rerun_leaves_the_earlier_result(tmp_path):
    occ = tmp_path / "occ"
    r = run_cli(*OCC, "--index", "0", "--index", "1", "--out", str(occ))
    assert r.returncode == 0, r.stderr
    before = digest(occ)
    img = os.path.join(REPO, "docs", "report", "occlusion-ankle-boot.png")
    bad = run_cli(*OCC[:2], "--window", "8", "--image", img, "--label", "9", "--image", img, "--label", "77",
                  "--out", str(occ))  # fmt: skip
    one_line(bad, "77")
    assert digest(occ) == before
    # a successful rerun on fewer images leaves no stale figure beside its JSON
    assert run_cli(*OCC, "--index", "3", "--out", str(occ)).returncode == 0
    listed = {i["figure"] for i in json.loads((occ / "occlusion.json").read_text())["images"]}
    assert {f for f in os.listdir(occ) if f.endswith(".png")} == listed == {"occlusion-0.png"}
    assert not os.path.exists(sibling(str(occ), "partial"))


# --- 3: a full disk --------------------------------------------------------------------------------------------

UNSHARE = shutil.which("unshare")


def _in_small_fs(script: str, tmp_path, size_mb: int = 48) -> subprocess.CompletedProcess:
    """Run the shell `script` with $D a fresh tmpfs of `size_mb` MiB, mounted in a private mount namespace (no
    root needed: a user namespace), so the file system really fills up (ENOSPC) and nothing is left mounted."""
    d = tmp_path / "fs"
    d.mkdir()
    body = f"set -e; mount -t tmpfs -o size={size_mb}m tmpfs {d}; export D={d}\n{script}"
    flags = "-m" if os.geteuid() == 0 else "-rm"
    return subprocess.run(
        [UNSHARE, flags, "sh", "-c", body],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, ZFNET_PROGRESS="0", OMP_NUM_THREADS="1"),
        timeout=900,
    )


def _can_mount() -> bool:
    if not UNSHARE:
        return False
    flags = "-m" if os.geteuid() == 0 else "-rm"
    r = subprocess.run([UNSHARE, flags, "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return r.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount(), reason="needs unshare and a tmpfs mount in a namespace")

# Leaves `keep` KiB free on $D: the next command starts, and runs out of space while it writes.
FILL = (
    'python -c "import os,sys; s=os.statvfs(sys.argv[1]); n=s.f_bavail*s.f_frsize-int(sys.argv[2])*1024;'
    " open(os.path.join(sys.argv[1],'filler'),'wb').write(b'x'*max(n,0))\" $D {keep}"
)
ZF = f"{sys.executable} -m zfnet"
DIGEST = f"{sys.executable} -c \"import sys; sys.path.insert(0, 'tests'); import test_reliability as t, json; print(json.dumps(t.digest(sys.argv[1]), sort_keys=True))\""  # noqa: E501


@needs_tmpfs
@pytest.mark.parametrize(
    "name, first, second",
    [
        ("atlas", ATLAS, ATLAS),  # the same atlas again: its panels and page are written anew
        ("occlusion", [*OCC, "--index", "0"], [*OCC, "--index", "0", "--stride", "2"]),
        pytest.param(  # slow: the same staged writes as atlas's and occlusion's above, through the report
            "report",
            ["report", "--limit", "120", "--evolution-limit", "120", "--examples", "1", "--atlas-maps", "4"],
            ["report", "--limit", "120", "--evolution-limit", "120", "--examples", "2", "--atlas-maps", "4"],
            marks=pytest.mark.slow,
        ),
    ],
)
def test_full_disk_keeps_the_earlier_result(name, first, second, tmp_path):
    """A rerun that fills the disk exits 2 with one line, and the earlier result is byte-identical."""
    script = textwrap.dedent(f"""
        {ZF} {" ".join(first)} --out $D/out > /dev/null
        {DIGEST} $D/out > $D/../before.json
        {FILL.format(keep=24)}
        set +e
        {ZF} {" ".join(second)} --out $D/out 2> $D/../err.txt > /dev/null
        echo $? > $D/../code.txt
        {DIGEST} $D/out > $D/../after.json
    """)
    r = _in_small_fs(script, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    err = (tmp_path / "err.txt").read_text()
    code = int((tmp_path / "code.txt").read_text())
    if name == "atlas" and code == 0:
        pytest.fail(f"the rerun did not fill the disk: {err}")
    assert code == 2 and "disk full" in err and "Traceback" not in err, err
    errors = [l for l in err.splitlines() if "error:" in l]  # the report also prints its stage lines
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert (tmp_path / "before.json").read_text() == (tmp_path / "after.json").read_text()


@needs_tmpfs
def test_full_disk_during_a_first_atlas_keeps_its_scan(tmp_path):
    """Item 3: a first atlas that runs out of space keeps its finished work (the scan) and says so; with space
    again, the same command finishes it, equal to an atlas made in one go."""
    straight = tmp_path / "straight"
    assert run_cli(*ATLAS, "--out", str(straight)).returncode == 0
    script = textwrap.dedent(f"""
        {FILL.format(keep=400)}
        set +e
        {ZF} {" ".join(ATLAS)} --out $D/out 2> $D/../err.txt > /dev/null
        echo $? > $D/../code.txt
        ls -a $D > $D/../listing.txt
        ls -a $D/.out.zfnet-partial > $D/../partial.txt 2>&1
        rm $D/filler
        {ZF} {" ".join(ATLAS)} --out $D/out 2> $D/../err2.txt > /dev/null
        echo $? > $D/../code2.txt
        cp $D/out/manifest.json $D/../manifest.json
        cp -r $D/out/maps $D/../maps
    """)
    r = _in_small_fs(script, tmp_path, size_mb=6)
    assert r.returncode == 0, r.stderr[-3000:]
    err = (tmp_path / "err.txt").read_text()
    assert (tmp_path / "code.txt").read_text().strip() == "2", err
    assert "disk full" in err and "finished work is kept" in err and "Traceback" not in err, err
    assert ".scan-state.safetensors" in (tmp_path / "partial.txt").read_text()
    assert "out\n" not in (tmp_path / "listing.txt").read_text()  # no half atlas under the final name
    assert (tmp_path / "code2.txt").read_text().strip() == "0", (tmp_path / "err2.txt").read_text()
    a = json.loads((straight / "manifest.json").read_text())
    b = json.loads((tmp_path / "manifest.json").read_text())
    assert a["layers"] == b["layers"]
    assert digest(straight / "maps") == digest(tmp_path / "maps")


# --- 6: a resumed scan over unreadable files equals the uninterrupted one ----------------------------------

SCAN = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    from zfnet import data as zdata
    from zfnet.methods.atlas import scan
    from zfnet.pipelines.atlas import ScanFile
    from zfnet.pretrained import open_embedded

    folder, state, kill_at, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    opened = open_embedded(torch.device("cpu"))
    ds = zdata.open_dataset("folder:" + folder, "all", opened.preprocess)
    get = ds.__getitem__

    def getitem(i):  # the process dies (SIGKILL) when it reaches image `kill_at`
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return get(i)

    ds.__class__ = type("Dying", (type(ds),), {"__getitem__": lambda self, i: getitem(i)})
    store = ScanFile(state, "k") if state else None
    r = scan(opened.model, ds, layers=["conv1", "conv3"], k=3, batch_size=2, workers=0, store=store,
             progress=False, save_every=0.0)
    json.dump({"images": r.images, "skipped": sorted(ds.skipped), "top": {n: [t.values.tolist(), t.images.tolist()]
               for n, t in r.top.items()}}, open(out, "w"))
""")


def test_resumed_scan_over_unreadable_files_equals_the_uninterrupted_one(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(11):
        if i in (1, 2, 6):  # unreadable: before the kill point (two in one batch) and after it
            (folder / f"img{i:02d}.png").write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    script = tmp_path / "scan.py"
    script.write_text(SCAN)

    def go(state: str, kill_at: int, out: str) -> int:
        return subprocess.run(
            [sys.executable, str(script), str(folder), state, str(kill_at), out],
            cwd=REPO,
            capture_output=True,
            timeout=300,
        ).returncode

    assert go("", -1, str(tmp_path / "straight.json")) == 0
    state = str(tmp_path / "state.safetensors")
    assert go(state, 5, str(tmp_path / "never.json")) == -signal.SIGKILL
    assert os.path.isfile(state)
    assert go(state, -1, str(tmp_path / "resumed.json")) == 0
    a = json.loads((tmp_path / "straight.json").read_text())
    b = json.loads((tmp_path / "resumed.json").read_text())
    assert a["images"] == 8 and a["skipped"] == [1, 2, 6]
    assert a == b


# --- 7-9: files read back --------------------------------------------------------------------------------------

REPORT = ["report", "--limit", "120", "--evolution-limit", "120", "--examples", "1", "--atlas-maps", "4"]
REPORT += ["--no-evidence"]  # the staged writes and read-backs below are every stage's; evidence is tested apart


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "rep"
    r = run_cli(*REPORT, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_damaged_report_json_is_redone(small_report, tmp_path):
    out = tmp_path / "rep"
    shutil.copytree(small_report, out)
    (out / "report.json").write_text('{"identity": {"model"')
    r = run_cli(*REPORT, "--out", str(out))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "report.json is damaged" in r.stderr and "reused" not in r.stderr
    assert json.loads((out / "report.json").read_text())["stages"]["atlas"]["status"] == "done"


@pytest.mark.parametrize(
    "rel, damage",
    [
        ("atlas/manifest.json", lambda t: t[: len(t) // 2]),
        ("occlusion/occlusion.json", lambda t: '{"images": [{"figure": "occlusion-0.png"}]}'),
        ("model/model.json", lambda t: '{"schema": 2, "model": "other"}'),
    ],
)
def test_damaged_stage_result_is_redone_not_reused(small_report, tmp_path, rel, damage):
    out = tmp_path / "rep"
    shutil.copytree(small_report, out)
    (out / rel).write_text(damage((out / rel).read_text()))
    r = run_cli(*REPORT, "--out", str(out))
    assert r.returncode == 0, r.stderr
    stage = rel.split("/")[0]
    assert f"{stage}: " in r.stderr and not any(
        l.startswith("[") and f"] {stage}:" in l and "reused" in l for l in r.stderr.splitlines()
    ), r.stderr
    redone = json.loads((out / rel).read_text())  # sound again, and complete
    assert redone.keys() == json.loads((small_report / rel).read_text()).keys()


def test_run_files_beside_the_weights_that_are_not_objects(tmp_path):
    """Item 8: recipe.json / metrics.json beside --weights that are not objects: a page, a note; after the files
    are repaired the model stage is redone (its key follows them)."""
    from zfnet.pretrained import folder

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(os.path.join(folder(), "model.safetensors"), run / "model.safetensors")
    (run / "recipe.json").write_text("[1, 2]")
    (run / "metrics.json").write_text('"fast"')
    args = ["report", "--model", "zfnet-small", "--weights", str(run / "model.safetensors")]
    args += ["--data", "fashion-mnist-mini", "--only", "model", "--out", str(tmp_path / "rep")]
    r = run_cli(*args)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "recipe.json" in r.stderr and "not an object" in r.stderr
    assert json.loads((tmp_path / "rep" / "model" / "model.json").read_text())["recipe"] is None
    (run / "recipe.json").write_text('{"lr": 0.01}')
    r = run_cli(*args)
    assert r.returncode == 0 and "reused" not in r.stderr, r.stderr
    assert json.loads((tmp_path / "rep" / "model" / "model.json").read_text())["recipe"] == {"lr": 0.01}


def test_damaged_atlas_settings_is_one_line(tmp_path):
    out = tmp_path / "atlas"
    assert run_cli(*ATLAS, "--out", str(out)).returncode == 0
    (out / "settings.json").write_text("[]")
    before = digest(out)
    one_line(run_cli(*ATLAS, "--out", str(out)), "settings.json is damaged", "delete the folder")
    assert digest(out) == before


# --- 11-13: ranges and names ------------------------------------------------------------------------------------


def test_dedupe_size_is_bounded(photos, tmp_path):
    r = run_cli("dedupe", f"folder:{photos}", f"folder:{photos}", "--size", "5000", "--out", str(tmp_path / "d"))
    one_line(r, "--size 5000", "2..64")
    assert not (tmp_path / "d").exists()


def test_transfer_on_one_class_is_one_line(photos, tmp_path):
    r = run_cli("transfer", "--pretrained", "--data", f"folder:{photos}", "--split", "all", "--no-scratch",
                "--out", str(tmp_path / "t"))  # fmt: skip
    one_line(r, "a classifier needs two or more")


def test_odd_out_paths_are_one_line(tmp_path):
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    one_line(run_cli(*OCC, "--index", "0", "--out", str(link)), "symbolic link", "does not exist")
    one_line(run_cli(*OCC, "--index", "0", "--out", str(tmp_path / ("n" * 300))), "at most 255")
    r = subprocess.run(
        [sys.executable, "-m", "zfnet", *OCC, "--index", "0", "--out", os.fsencode(str(tmp_path)) + b"/bad\xff"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, ZFNET_PROGRESS="0"),
        timeout=300,
    )
    one_line(r, "not UTF-8")


def test_a_read_only_cache_falls_back(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        if os.access(cache, os.W_OK):  # root ignores the mode: make the lock folder's place a file instead
            cache.chmod(0o700)
            (cache / "locks").write_text("not a folder")
        out = tmp_path / "occ"
        r = run_cli(*OCC, "--index", "0", "--out", str(out), env={"ZFNET_CACHE": str(cache)})
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert (out / "occlusion.json").is_file() and (out / MARKER).is_file()
    finally:
        cache.chmod(0o700)
