"""`openic datasets`: the digits set (byte-identical with MXNet's fixtures at the default seed) and CIFAR-10
downloads against a local HTTP server (resume, md5, HTTP errors, unsafe archives, the mxnet .rec source)."""

import hashlib
import io
import os
import pickle
import re
import struct
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from _shared import digits_sources, fixture_md5, needs_fixtures

import openic.cli
from openic.errors import ClientError, DataError
from openic.formats.images import decode_image, encode_image
from openic.formats.lst import read_lst
from openic.formats.recordio import IRHeader, RecordReader, RecordWriter, pack, unpack
from openic.prep.samples import CIFAR10_MD5, CIFAR10_TARBALL, digits_image, load_digits, make_cifar10, make_digits


def cli(argv, monkeypatch):
    """Run `openic ...` with only this subcommand registered (the other modules are not under test here)."""
    monkeypatch.setattr(openic.cli, "_COMMAND_MODULES", ("openic.cli.datasets",))
    return openic.cli.main([str(a) for a in argv])


def records(rec):
    with RecordReader(rec) as r:
        return [(key, *unpack(r.read_key(key))) for key in r.keys()]


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def tree_md5s(root):
    return {str(p.relative_to(root)): md5(p) for p in sorted(Path(root).rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return make_digits(root)


def test_vendored_digits_parse_like_sklearn_load_digits(monkeypatch):
    """The vendored CSV gives exactly ``sklearn.datasets.load_digits()``'s ``images`` and ``target`` (md5s taken
    from scikit-learn 1.9.1), without importing scikit-learn or scipy."""
    monkeypatch.setitem(sys.modules, "sklearn", None)  # any import of them now raises ImportError
    monkeypatch.setitem(sys.modules, "scipy", None)
    images, target = load_digits()
    assert (images.shape, images.dtype, target.shape, target.dtype) == ((1797, 8, 8), np.float64, (1797,), np.int64)
    assert hashlib.md5(images.tobytes()).hexdigest() == "d6e82f52e878ac05caeba9180afc2e00"
    assert hashlib.md5(target.tobytes()).hexdigest() == "1041ea9b393a866c07fc3ca1c2bb06cd"


def test_digits_counts_and_labels_match_sklearn(digits):
    _, target = load_digits()
    assert (digits.num_train, digits.num_val) == (1437, 360)  # int(1797 * 0.8)
    assert digits.classes == tuple(str(i) for i in range(10))
    assert digits.classes_path.read_text() == "".join(f"{i}\n" for i in range(10))
    seen = set()
    for lst, rec, n in [(digits.train_lst, digits.train_rec, 1437), (digits.val_lst, digits.val_rec, 360)]:
        entries = {e.index: e for e in read_lst(lst)}
        recs = records(rec)
        assert len(recs) == len(entries) == n
        for key, header, payload in recs:
            sk_index = int(Path(entries[key].path).stem)  # images are named by their sklearn index
            assert header.label == target[sk_index] == entries[key].labels[0]
            assert header.id == key and header.flag == 0
            assert Path(entries[key].path).parent.name == str(target[sk_index])
            seen.add(sk_index)
            img = decode_image(payload)
            assert img.shape == (32, 32, 3)
            # R = v and G = 255 - v survive two JPEG round trips (4:2:0 chroma) only approximately
            r, g = img[..., 0].astype(int), img[..., 1].astype(int)
            assert np.abs(r + g - 255).mean() < 8 and np.corrcoef(r.ravel(), g.ravel())[0, 1] < -0.98
    assert seen == set(range(1797))


def test_digits_image_folder_colouring(digits):
    images, target = load_digits()
    files = sorted(digits.image_dir.rglob("*.*"))
    assert len(files) == 1797 and sum(f.suffix == ".png" for f in files) == 10
    for f in files:
        i, label = int(f.stem), int(f.parent.name)
        assert target[i] == label
        if f.suffix == ".png":  # lossless: the exact recipe
            img = decode_image(f.read_bytes())
            np.testing.assert_array_equal(img, digits_image(images[i], label))
            r, g, b = (img[..., c].astype(int) for c in range(3))
            assert (r + g == 255).all()
            np.testing.assert_array_equal(b, np.clip(np.round(r / 2) + 20 * label, 0, 255))
            assert r.max() > 200  # scaled to 0..255, not 0..16


def test_digits_channels_differ_per_class():
    images, _ = load_digits()
    a, b = digits_image(images[0], 0), digits_image(images[0], 3)
    np.testing.assert_array_equal(a[..., :2], b[..., :2])
    assert (b[..., 2].astype(int) - a[..., 2] > 0).all()  # blue carries 20 * class


@needs_fixtures
def test_digits_byte_identical_with_mxnet_fixtures(digits):
    for name in [
        "digits_train.lst",
        "digits_val.lst",
        "digits_train.rec",
        "digits_val.rec",
        "digits_train.idx",
        "digits_val.idx",
    ]:
        assert md5(digits.root / name) == fixture_md5(f"rec/{name}"), name
    sources = digits_sources()  # MXNet's source images: all 1,797, or the subset's 360 validation images
    assert len(sources) >= 360
    for rel, data in sources.items():  # same pixels (not the same bytes: another JPEG/PNG encoder)
        np.testing.assert_array_equal(decode_image((digits.image_dir / rel).read_bytes()), decode_image(data))


def test_digits_rerun_overwrites_cleanly(tmp_path, digits):
    root = tmp_path / "d"
    make_digits(root)
    before = tree_md5s(root)
    (root / "images" / "3" / "stale.jpg").write_bytes(b"left over from an older run")
    (root / "images.partial").mkdir()  # as a killed run would leave it
    info = make_digits(root)
    assert tree_md5s(root) == before  # same bytes, stale file and partial folder gone
    assert info.num_train == 1437 and not list(root.glob("*.partial")) and not (root / "images.old").exists()


def test_digits_cli_seed_and_ratio(tmp_path, monkeypatch, capsys, digits):
    assert cli(["datasets", "digits", tmp_path, "--seed", 7, "--train-ratio", 0.5, "--quiet"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "1797 images, 10 classes" in out and str(tmp_path / "digits_train.rec") in out
    train, val = read_lst(tmp_path / "digits_train.lst"), read_lst(tmp_path / "digits_val.lst")
    assert (len(train), len(val)) == (898, 899)
    assert len(records(tmp_path / "digits_val.rec")) == 899
    assert {e.index for e in train} | {e.index for e in val} == set(range(1797))
    default_order = [e.index for e in read_lst(digits.train_lst)][:20]
    assert [e.index for e in train][:20] != default_order  # another seed, another shuffle


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_digits_cli_bad_ratio(tmp_path, monkeypatch, capsys, ratio):
    assert cli(["datasets", "digits", tmp_path, "--train-ratio", ratio], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("openic datasets: error: train_ratio") and ratio in err
    assert not (tmp_path / "images").exists()


def test_datasets_cli_needs_a_dataset(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["datasets"], monkeypatch)
    assert e.value.code == 2
    assert "digits" in capsys.readouterr().err


# --------------------------------------------------------------------------- a local HTTP server


class Server:
    """Serves `files` (URL path -> bytes) with Range support; records (path, Range header) per request."""

    def __init__(self):
        self.files, self.requests = {}, []
        self.ignore_range, self.cut_after = False, None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                end = len(body) if server.cut_after is None else start + server.cut_after
                self.wfile.write(body[start:end])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with Server() as s:
        yield s


# --------------------------------------------------------------------------- a tiny CIFAR-10 tarball


class Py2Pickler(pickle._Pickler):
    """Writes strings as Python 2 `str` (BINSTRING), as cPickle did for the real batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        self.write(
            pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj
        )
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # numpy 1's module name


NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_batches(seed=0, per_batch=3, test_count=4):
    """{member name: bytes} and the expected (images NHWC, labels) per split."""
    rng = np.random.default_rng(seed)
    members, expected = {}, {"train": ([], []), "test": ([], [])}
    for name, n, split in [
        *[(f"data_batch_{i}", per_batch, "train") for i in range(1, 6)],
        ("test_batch", test_count, "test"),
    ]:
        nhwc = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=n)]
        batch = {
            "batch_label": name,
            "labels": labels,
            "data": nhwc.transpose(0, 3, 1, 2).reshape(n, 3072),
            "filenames": [f"img_{name}_{i}.png" for i in range(n)],
        }
        members[f"cifar-10-batches-py/{name}"] = py2_pickle(batch)
        expected[split][0].extend(nhwc)
        expected[split][1].extend(labels)
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(
        {"num_cases_per_batch": per_batch, "label_names": NAMES, "num_vis": 3072}
    )
    return members, expected


def make_tarball(members, extra=()):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cifar():
    members, expected = make_batches()
    tarball = make_tarball(members)
    return tarball, hashlib.md5(tarball).hexdigest(), expected


def serve_tarball(server, tarball):
    server.files["/kriz/" + CIFAR10_TARBALL] = tarball
    return server.base + "/kriz/"


def check_cifar_recs(info, expected):
    assert info.classes == tuple(NAMES)
    assert info.classes_path.read_text().splitlines() == NAMES
    for rec, split in [(info.train_rec, "train"), (info.val_rec, "test")]:
        images, labels = expected[split]
        recs = records(rec)
        assert [k for k, _, _ in recs] == list(range(len(labels)))
        for (key, header, payload), img, label in zip(recs, images, labels, strict=True):
            assert (header.flag, header.label, header.id) == (0, label, key)
            assert payload[:8] == b"\x89PNG\r\n\x1a\n"
            np.testing.assert_array_equal(decode_image(payload), img)  # lossless, channel order kept


def test_cifar10_toronto(tmp_path, server, cifar):
    tarball, digest, expected = cifar
    base = serve_tarball(server, tarball)
    info = make_cifar10(tmp_path, url=base, md5=digest, progress=False)
    assert (info.num_train, info.num_val, info.val_split) == (15, 4, "test")
    assert info.train_rec == tmp_path / "cifar10_train.rec" and info.val_rec == tmp_path / "cifar10_test.rec"
    check_cifar_recs(info, expected)
    assert (tmp_path / CIFAR10_TARBALL).read_bytes() == tarball
    assert not list(tmp_path.glob("*.part*")) and not (tmp_path / "cifar-10-batches-py").exists()
    assert server.requests == [("/kriz/" + CIFAR10_TARBALL, None)]
    make_cifar10(tmp_path, url=base, md5=digest, progress=False)  # the verified download is re-used
    assert len(server.requests) == 1
    check_cifar_recs(info, expected)


@pytest.mark.parametrize("ignore_range", [False, True])
def test_cifar10_resumes_partial_download(tmp_path, server, cifar, ignore_range):
    tarball, digest, expected = cifar
    base = serve_tarball(server, tarball)
    server.ignore_range = ignore_range
    # a server that ignores Range sends everything again: the stale prefix must not be kept
    (tmp_path / f"{CIFAR10_TARBALL}.part").write_bytes(b"\0" * 100 if ignore_range else tarball[:100])
    info = make_cifar10(tmp_path, url=base, md5=digest, progress=False)
    assert server.requests == [("/kriz/" + CIFAR10_TARBALL, "bytes=100-")]
    assert (tmp_path / CIFAR10_TARBALL).read_bytes() == tarball
    check_cifar_recs(info, expected)


def test_cifar10_interrupted_then_resumed(tmp_path, server, cifar):
    tarball, digest, expected = cifar
    base = serve_tarball(server, tarball)
    server.cut_after = len(tarball) // 3
    with pytest.raises(ClientError, match=r"download interrupted: http://127\.0\.0\.1:\d+/kriz/.*run again to resume"):
        make_cifar10(tmp_path, url=base, md5=digest, progress=False)
    part = tmp_path / f"{CIFAR10_TARBALL}.part"
    assert part.read_bytes() == tarball[: len(tarball) // 3]
    assert not (tmp_path / CIFAR10_TARBALL).exists()
    server.cut_after = None
    check_cifar_recs(make_cifar10(tmp_path, url=base, md5=digest, progress=False), expected)
    assert server.requests[-1][1] == f"bytes={len(tarball) // 3}-"


def test_cifar10_complete_part_file_is_not_fetched_again(tmp_path, server, cifar):
    tarball, digest, expected = cifar
    base = serve_tarball(server, tarball)
    (tmp_path / f"{CIFAR10_TARBALL}.part").write_bytes(tarball)  # killed between download and rename
    check_cifar_recs(make_cifar10(tmp_path, url=base, md5=digest, progress=False), expected)
    assert server.requests == [("/kriz/" + CIFAR10_TARBALL, f"bytes={len(tarball)}-")]  # answered 416


def test_cifar10_md5_mismatch_deletes_the_file(tmp_path, server, cifar):
    tarball, digest, _ = cifar
    base = serve_tarball(server, tarball)
    with pytest.raises(DataError, match=f"md5 mismatch: expected {CIFAR10_MD5}, got {digest}") as e:
        make_cifar10(tmp_path, url=base, progress=False)  # the official md5 is the default
    assert base in str(e.value)
    assert not list(tmp_path.glob("cifar-10-python*")) and not (tmp_path / "cifar10_train.rec").exists()


def test_cifar10_http_404(tmp_path, server, monkeypatch, capsys):
    url = server.base + "/nowhere"
    with pytest.raises(ClientError, match=rf"download failed: {re.escape(url)}/{CIFAR10_TARBALL}: HTTP 404"):
        make_cifar10(tmp_path, url=url, progress=False)
    assert cli(["datasets", "cifar10", tmp_path, "--url", url, "--quiet"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("openic datasets: error: download failed:") and "HTTP 404" in err and url in err
    assert not list(tmp_path.iterdir())


def test_cifar10_refuses_escaping_members(tmp_path, server):
    members, _ = make_batches(per_batch=1, test_count=1)
    evil = tarfile.TarInfo("cifar-10-batches-py/../../evil.txt")
    evil.size = 3
    link = tarfile.TarInfo("cifar-10-batches-py/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for extra, word in [(evil, "outside"), (link, "link")]:
        tarball = make_tarball(members, [extra])
        base = serve_tarball(server, tarball)
        dest = tmp_path / word
        with pytest.raises(DataError, match=f"member '{re.escape(extra.name)}'.*{word}"):
            make_cifar10(dest, url=base, md5=hashlib.md5(tarball).hexdigest(), progress=False)
        assert not (tmp_path / "evil.txt").exists() and not (dest / "cifar10_train.rec").exists()


def test_cifar10_refuses_pickled_callables(tmp_path, server):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    members, _ = make_batches(per_batch=1, test_count=1)
    members["cifar-10-batches-py/data_batch_2"] = pickle.dumps({"data": Evil()}, protocol=2)
    tarball = make_tarball(members)
    base = serve_tarball(server, tarball)
    with pytest.raises(DataError, match=r"data_batch_2: not a CIFAR-10 batch: .*global '(posix|os|nt)\.system'"):
        make_cifar10(tmp_path, url=base, md5=hashlib.md5(tarball).hexdigest(), progress=False)
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- the mxnet source


def tiny_rec(tmp_path, name, n):
    rng = np.random.default_rng(n)
    with RecordWriter(tmp_path / name) as w:  # as published: no .idx
        for i in range(n):
            img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            w.write(pack(IRHeader(0, float(i % 10), i, 0), encode_image(img, ".jpg", 90)))
    return (tmp_path / name).read_bytes()


def test_cifar10_mxnet_source_via_cli(tmp_path, server, monkeypatch, capsys):
    server.files["/cifar10/cifar10_train.rec"] = tiny_rec(tmp_path, "t.rec", 12)
    server.files["/cifar10/cifar10_val.rec"] = tiny_rec(tmp_path, "v.rec", 5)
    out = tmp_path / "out"
    argv = ["datasets", "cifar10", out, "--source", "mxnet", "--url", server.base + "/cifar10", "--quiet"]
    assert cli(argv, monkeypatch) == 0
    summary = capsys.readouterr().out
    assert "cifar10: 17 images, 10 classes (airplane," in summary and str(out / "cifar10_val.rec") in summary
    assert (out / "cifar10_train.rec").read_bytes() == server.files["/cifar10/cifar10_train.rec"]
    recs = records(out / "cifar10_val.rec")  # through the .idx built after the download
    assert [(k, h.label) for k, h, _ in recs] == [(i, float(i % 10)) for i in range(5)]
    assert (out / "cifar10_classes.txt").read_text().splitlines()[:2] == ["airplane", "automobile"]
    assert cli(argv, monkeypatch) == 0  # re-run: both files re-used
    assert len(server.requests) == 2


def test_cifar10_mxnet_source_rejects_a_broken_rec(tmp_path, server):
    good = tiny_rec(tmp_path, "t.rec", 4)
    server.files["/c/cifar10_train.rec"] = good[:-10]  # truncated last record
    with pytest.raises(DataError, match="truncated"):
        make_cifar10(tmp_path / "out", source="mxnet", url=server.base + "/c/", progress=False)
    assert not list((tmp_path / "out").iterdir())  # neither the .part nor a final file is left


def test_cifar10_unknown_source(tmp_path):
    with pytest.raises(ClientError, match="unknown CIFAR-10 source 'kaggle'; valid: toronto, mxnet"):
        make_cifar10(tmp_path, source="kaggle")
