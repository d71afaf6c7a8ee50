"""RecordIO read throughput and im2rec packing speed: openic vs MXNet 1.9.1, side by side on the same files.

    .venv/bin/python bench/recordio.py            # about 30 s on 2 cores once bench/.work exists
    .venv/bin/python bench/recordio.py --quick    # smaller synthetic sets, for a smoke run

Reads: sequential scan (``RecordReader.scan`` vs ``MXRecordIO.read``), random access by key in one shuffled
order (``read_key`` vs ``MXIndexedRecordIO.read_idx``), and scan + decode (``unpack`` + ``decode_image`` to RGB
vs ``mx.recordio.unpack_img(s, 1)``, i.e. ``cv2.imdecode``). Each figure is the best of 3 passes.
Packing: ``openic im2rec`` vs MXNet's ``tools/im2rec.py`` (shipped in the mxnet wheel) with ``--quality 95
--num-thread 1`` and ``2`` on the same .lst, best of 2, timed inside each process after its imports (startup is reported
separately); the two .rec/.idx pairs are compared byte for byte.

MXNet runs in its own venv (``bench/mxnet_env.py``); synthetic data lives in ``bench/.work`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from mxnet_env import ensure_mxnet_venv, mxnet_im2rec_script  # noqa: E402

from openic.formats.images import decode_image, encode_image  # noqa: E402
from openic.formats.recordio import IRHeader, RecordReader, RecordWriter, pack, unpack  # noqa: E402

WORK = REPO / "bench" / ".work"
FIXTURES = REPO.parent / "shared" / "fixtures"
PASSES = 3

# Runs inside the MXNet venv: the same three measurements with MXNet's Python API; prints JSON.
_MXNET_READ = r"""
import json, sys, time
import mxnet as mx
args = json.loads(sys.argv[1])
keys = json.load(open(args["keys"]))
def best(fn):
    times = []
    for _ in range(args["passes"]):
        t = time.perf_counter(); n, nbytes = fn(); times.append(time.perf_counter() - t)
    return {"records": n, "bytes": nbytes, "seconds": min(times)}
def seq():
    r = mx.recordio.MXRecordIO(args["rec"], "r"); n = nbytes = 0
    while True:
        s = r.read()
        if s is None: break
        n += 1; nbytes += len(s)
    r.close(); return n, nbytes
def rand():
    r = mx.recordio.MXIndexedRecordIO(args["idx"], args["rec"], "r"); n = nbytes = 0
    for k in keys:
        s = r.read_idx(k); n += 1; nbytes += len(s)
    r.close(); return n, nbytes
def dec():
    r = mx.recordio.MXRecordIO(args["rec"], "r"); n = nbytes = 0
    while True:
        s = r.read()
        if s is None: break
        header, img = mx.recordio.unpack_img(s, 1)
        n += 1; nbytes += len(s)
    r.close(); return n, nbytes
print(json.dumps({"sequential": best(seq), "random by key": best(rand), "scan + decode": best(dec)}))
"""


def _best(fn) -> dict[str, float]:
    times, n, nbytes = [], 0, 0
    for _ in range(PASSES):
        t = time.perf_counter()
        n, nbytes = fn()
        times.append(time.perf_counter() - t)
    return {"records": n, "bytes": nbytes, "seconds": min(times)}


def openic_reads(rec: Path, keys: list[int]) -> dict[str, dict[str, float]]:
    def seq() -> tuple[int, int]:
        n = nbytes = 0
        with RecordReader(rec) as r:
            for data, _ in r.scan():
                n += 1
                nbytes += len(data)
        return n, nbytes

    def rand() -> tuple[int, int]:
        n = nbytes = 0
        with RecordReader(rec) as r:
            for k in keys:
                nbytes += len(r.read_key(k))
                n += 1
        return n, nbytes

    def dec() -> tuple[int, int]:
        n = nbytes = 0
        with RecordReader(rec) as r:
            for data, _ in r.scan():
                decode_image(unpack(data)[1])
                n += 1
                nbytes += len(data)
        return n, nbytes

    return {"sequential": _best(seq), "random by key": _best(rand), "scan + decode": _best(dec)}


def mxnet_reads(mxpy: Path, rec: Path, keys: list[int]) -> dict[str, dict[str, float]]:
    keys_file = WORK / "keys.json"
    keys_file.write_text(json.dumps(keys))
    args = {"rec": str(rec), "idx": str(rec.with_suffix(".idx")), "keys": str(keys_file), "passes": PASSES}
    out = subprocess.run([str(mxpy), "-c", _MXNET_READ, json.dumps(args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- synthetic data


def make_image_folder(root: Path, count: int, size: int, classes: int = 10) -> Path:
    """``root/<class>/<n>.jpg``: smooth random colour fields (compress like photos, not like noise)."""
    marker = root / f".done-{count}-{size}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        c = rng.uniform(0, 255, (3, 3))
        img = np.stack([c[k, 0] * xx + c[k, 1] * yy + c[k, 2] * xx * yy for k in range(3)], -1) % 256
        img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
        folder = root / str(i % classes)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(encode_image(img, ".jpg", 90))
    marker.touch()
    return root


def make_rec_from_folder(root: Path, rec: Path) -> Path:
    """Pack every image of ``root`` as-is (pass-through) into ``rec`` + ``.idx``, keys 0..N-1."""
    if rec.exists() and rec.with_suffix(".idx").exists():
        return rec
    files = sorted(p for p in root.rglob("*.jpg"))
    with RecordWriter(rec, rec.with_suffix(".idx")) as w:
        for i, f in enumerate(files):
            w.write(pack(IRHeader(0, float(int(f.parent.name)), i, 0), f.read_bytes()), key=i)
    return rec


# --------------------------------------------------------------------------- im2rec


_ENV = os.environ | {"PYTHONPATH": str(REPO / "src")}  # works without an install


def _run(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_ENV)
    return time.perf_counter() - t


def _timed_in_process(python: str, setup: str, call: str) -> float:
    """Seconds spent in ``call`` inside a fresh interpreter, after ``setup`` (the imports) has run."""
    code = f"import time\n{setup}\nt = time.perf_counter()\n{call}\nprint(time.perf_counter() - t)"
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, env=_ENV)
    return float(out.stdout.strip().splitlines()[-1])


def im2rec_compare(mxpy: Path, root: Path, name: str, repeats: int = 2, threads: int = 1) -> dict[str, object]:
    """List once with MXNet, then pack the same .lst with both tools (best of ``repeats``); compare the bytes."""
    mx_script = str(mxnet_im2rec_script(mxpy))
    base = WORK / "im2rec" / name
    shutil.rmtree(base, ignore_errors=True)
    (base / "mx").mkdir(parents=True)
    (base / "oi").mkdir(parents=True)
    _run([str(mxpy), mx_script, str(base / "mx" / name), str(root), "--list", "--recursive"])
    shutil.copy(base / "mx" / f"{name}.lst", base / "oi" / f"{name}.lst")
    with open(base / "mx" / f"{name}.lst") as f:
        images = sum(1 for _ in f)
    for f in root.rglob("*"):  # warm the page cache so neither tool pays for the first read
        if f.is_file():
            f.read_bytes()
    flags = ["--quality", "95", "--num-thread", str(threads)]
    mx_argv = [mx_script, str(base / "mx" / name), str(root), *flags]
    oi_argv = ["im2rec", str(base / "oi" / name), str(root), *flags, "--quiet"]
    mx_setup = f"import runpy, sys, mxnet, cv2\nsys.argv = {mx_argv!r}"
    t_mx = min(
        _timed_in_process(str(mxpy), mx_setup, f"runpy.run_path({mx_script!r}, run_name='__main__')")
        for _ in range(repeats)
    )
    # as MXNet's side imports mxnet and cv2 before the clock starts, so does openic's (OpenCV when installed)
    # (and the modules the CLI's parser imports, which is import time too; the parser itself is built again)
    oi_setup = ("from openic.cli import main, build_parser\nimport openic.prep.im2rec\n"
                "from openic.formats import opencv\nopencv._module()\nbuild_parser()")
    t_oi = min(_timed_in_process(sys.executable, oi_setup, f"main({oi_argv!r})") for _ in range(repeats))
    start_mx = min(_run([str(mxpy), "-c", "import mxnet, cv2"]) for _ in range(repeats))
    start_oi = min(_run([sys.executable, "-m", "openic", "im2rec", "--help"]) for _ in range(repeats))
    same = all(
        (base / "mx" / f"{name}{ext}").read_bytes() == (base / "oi" / f"{name}{ext}").read_bytes()
        for ext in (".rec", ".idx")
    )
    return {
        "images": images,
        "mxnet_s": t_mx,
        "openic_s": t_oi,
        "mxnet_start": start_mx,
        "openic_start": start_oi,
        "identical": same,
    }


# --------------------------------------------------------------------------- report


def _rate(m: dict[str, float]) -> tuple[float, float]:
    return m["records"] / m["seconds"], m["bytes"] / m["seconds"] / 1e6


def print_read_table(results: list[tuple[str, dict, dict]]) -> None:
    head = f"{'file':<22} {'measure':<15} {'openic rec/s':>13} {'MB/s':>8} {'MXNet rec/s':>12} {'MB/s':>8} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for name, ours, theirs in results:
        for measure in ours:
            (r1, b1), (r2, b2) = _rate(ours[measure]), _rate(theirs[measure])
            print(f"{name:<22} {measure:<15} {r1:>13,.0f} {b1:>8.1f} {r2:>12,.0f} {b2:>8.1f} {r1 / r2:>5.2f}x")


def print_im2rec_table(rows: list[tuple[str, dict]]) -> None:
    head = (
        f"{'folder':<16} {'images':>7} {'openic s':>9} {'MXNet s':>8} {'openic img/s':>13} {'MXNet img/s':>12} "
        f"{'ratio':>6} {'same bytes':>10}"
    )
    print(head)
    print("-" * len(head))
    for name, r in rows:
        n = r["images"]
        oi, mx = n / r["openic_s"], n / r["mxnet_s"]
        print(
            f"{name:<16} {n:>7} {r['openic_s']:>9.2f} {r['mxnet_s']:>8.2f} {oi:>13,.0f} {mx:>12,.0f} "
            f"{oi / mx:>5.2f}x {'yes' if r['identical'] else 'NO':>10}"
        )
    print(
        f"(packing only, imports excluded; process startup is another {rows[0][1]['openic_start']:.2f} s for "
        f"openic and {rows[0][1]['mxnet_start']:.2f} s for MXNet)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 small + 200 large synthetic images")
    args = parser.parse_args()
    small_n, large_n = (1000, 200) if args.quick else (10000, 2000)
    mxpy = ensure_mxnet_venv()
    WORK.mkdir(parents=True, exist_ok=True)
    small = make_image_folder(WORK / f"synth32_{small_n}", small_n, 32)
    large = make_image_folder(WORK / f"synth224_{large_n}", large_n, 224)
    recs = [
        make_rec_from_folder(small, WORK / f"synth32_{small_n}.rec"),
        make_rec_from_folder(large, WORK / f"synth224_{large_n}.rec"),
    ]
    if (FIXTURES / "rec" / "digits_train.rec").exists():
        recs.insert(0, FIXTURES / "rec" / "digits_train.rec")

    reads = []
    for rec in recs:
        with RecordReader(rec) as r:
            keys = r.keys()
        random.Random(0).shuffle(keys)
        reads.append((rec.name, openic_reads(rec, keys), mxnet_reads(mxpy, rec, keys)))
    folders = [(f"synth32_{small_n}", small), (f"synth224_{large_n}", large)]
    if (FIXTURES / "digits").is_dir():
        folders.insert(0, ("digits", FIXTURES / "digits"))
    packs = {t: [(name, im2rec_compare(mxpy, root, name, threads=t)) for name, root in folders] for t in (1, 2)}

    print(f"\nRecordIO reads, best of {PASSES} passes (ratio = openic / MXNet records/s)\n")
    print_read_table(reads)
    for threads, rows in packs.items():
        print(f"\nim2rec packing, --quality 95 --num-thread {threads}, same .lst (ratio = openic / MXNet images/s)\n")
        print_im2rec_table(rows)


if __name__ == "__main__":
    main()
