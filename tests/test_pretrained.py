"""``use_pretrained_model=1`` from MXNet's ImageNet checkpoints (``resnet-N-symbol.json`` + ``resnet-N-0000.params``)
and ``openic pretrained download``, against an HTTP server on 127.0.0.1 serving files this test wrote (no download
is possible here; the real files are data.mxnet.io's)."""

import hashlib
import http.server
import json
import shutil
import threading
from functools import partial

import numpy as np
import pytest
import torch
from mxnet_helpers import params_bytes, symbol, write_checkpoint

from openic.artifacts import load_model
from openic.artifacts.pretrained import files
from openic.cli import main
from openic.formats.images import encode_image
from openic.formats.mxnet_params import read_params
from openic.formats.recordio import IRHeader, RecordWriter, pack
from openic.models.resnet import mxnet_name_map

SHAPE = (3, 48, 48)  # > 32: the 7x7 stem ImageNet weights have


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """A ResNet-18 ImageNet-style checkpoint (1,000 classes, no model-shapes.json), laid out as data.mxnet.io."""
    root = tmp_path_factory.mktemp("mirror")
    write_checkpoint(root / "18-layers", "resnet-18", 0, 18, 1000, (3, 224, 224), seed=5, shapes=False)
    return root


class _Counting(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(imagenet, tmp_path):
    """Serves a copy of the mirror (tests tamper with it), and counts the requests."""
    root = tmp_path / "served"
    shutil.copytree(imagenet, root)
    _Counting.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Counting, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _download(url, dest, *extra):
    return main(["pretrained", "download", "resnet-18", "--dir", str(dest), "--base-url", url, "--quiet", *extra])


def test_download_is_verified_and_pinned(server, tmp_path, capsys):
    root, url = server
    dest = tmp_path / "weights"
    assert _download(url, dest) == 0
    sums = dict(reversed(line.split("  ")) for line in (dest / "SHA256SUMS").read_text().splitlines())
    for name in ("resnet-18-symbol.json", "resnet-18-0000.params"):
        assert (dest / name).read_bytes() == (root / "18-layers" / name).read_bytes()
        assert sums[name] == hashlib.sha256((dest / name).read_bytes()).hexdigest()
    assert len(_Counting.requests) == 2
    assert _download(url, dest) == 0 and len(_Counting.requests) == 2  # verified files are kept
    # upstream changes: the pinned digest refuses the new file
    params = root / "18-layers" / "resnet-18-0000.params"
    params.write_bytes(params.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    (dest / "resnet-18-0000.params").unlink()
    capsys.readouterr()
    assert _download(url, dest) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (dest / "resnet-18-0000.params").exists() and not list(dest.glob("*.part"))


def test_given_checksums_are_enforced(server, tmp_path, capsys):
    _, url = server
    sums = tmp_path / "SUMS"
    sums.write_text(f"{'0' * 64}  resnet-18-symbol.json\n{'1' * 64}  resnet-18-0000.params\n")
    assert _download(url, tmp_path / "w", "--checksums", str(sums)) == 2
    assert "sha256 mismatch: expected 0000" in capsys.readouterr().err
    sums.write_text("not a checksum line\n")
    assert _download(url, tmp_path / "w", "--checksums", str(sums)) == 2
    assert "is not a sha256sum line" in capsys.readouterr().err


def test_a_file_that_is_not_this_resnet_is_deleted(server, tmp_path, capsys):
    root, url = server
    (root / "18-layers" / "resnet-18-symbol.json").write_text(json.dumps(symbol(34, 1000, 224)))
    assert _download(url, tmp_path / "w") == 2
    err = capsys.readouterr().err
    assert "is not MXNet's ImageNet ResNet-18" in err and "ResNet-34" in err
    assert not list((tmp_path / "w").glob("resnet-18-*")) and not (tmp_path / "w" / "SHA256SUMS").exists()


def test_missing_model_and_unknown_name(server, tmp_path, capsys):
    _, url = server
    assert main(["pretrained", "download", "resnet-50", "--dir", str(tmp_path), "--base-url", url, "--quiet"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["pretrained", "download", "resnet-20", "--dir", str(tmp_path)]) == 2
    assert "resnet-18, resnet-34, resnet-50, resnet-101, resnet-152, resnet-200" in capsys.readouterr().err
    assert main(["pretrained", "list"]) == 0
    assert files("resnet-152")["resnet-152-0000.params"] in capsys.readouterr().out


def _rec(path, n=16):
    rng = np.random.default_rng(0)
    with RecordWriter(path, path.with_suffix(".idx")) as w:
        for i in range(n):
            img = (rng.integers(0, 100, (*SHAPE[1:], 3)) + 150 * (i % 2)).astype(np.uint8)
            w.write(pack(IRHeader(0, float(i % 2), i, 0), encode_image(img, ".png")), key=i)
    return path


def _train(rec, out, *extra, shape=SHAPE, layers="18"):
    return main(["train", "--train", str(rec), "--validation", str(rec), "--output-dir", str(out),
                 "--num_training_samples", "16", "--num_layers", layers, "--image_shape", ",".join(map(str, shape)),
                 "--num_classes", "2", "--mini_batch_size", "8", "--epochs", "1", "--learning_rate", "1e-6",
                 "--use_pretrained_model", "1", *extra])


def test_training_starts_from_the_downloaded_weights(server, tmp_path, monkeypatch, capsys):
    _, url = server
    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENIC_PRETRAINED_DIR", raising=False)
    assert main(["pretrained", "download", "resnet-18", "--base-url", url, "--quiet"]) == 0
    home = tmp_path / "home" / "pretrained"
    mx = read_params(home / "resnet-18-0000.params")
    rec = _rec(tmp_path / "train.rec")
    assert _train(rec, tmp_path / "out") == 0  # no --pretrained: the download folder is where training looks
    assert "Using pretrained model" in capsys.readouterr().out
    model = load_model(tmp_path / "out" / "model.tar.gz").model
    names, state = mxnet_name_map(model), model.state_dict()
    for mx_name in ("conv0_weight", "stage4_unit2_conv2_weight", "stage2_unit1_sc_weight"):
        got = state[names[mx_name]]
        assert torch.allclose(got, torch.from_numpy(mx[f"arg:{mx_name}"]), atol=1e-4), mx_name
    assert model.fc1.weight.shape == (2, 512)  # the classifier is new: 2 classes, not ImageNet's 1,000
    # the .params file itself, with its symbol beside it: that file, even with a higher-numbered one beside it
    later = {k: v * 0 if k.startswith("arg:conv0") else v for k, v in mx.items()}
    (home / "resnet-18-0010.params").write_bytes(params_bytes(later))
    assert _train(rec, tmp_path / "file", "--pretrained", str(home / "resnet-18-0000.params")) == 0
    conv0 = load_model(tmp_path / "file" / "model.tar.gz").model.conv0.weight.detach()
    assert torch.allclose(conv0, torch.from_numpy(mx["arg:conv0_weight"]), atol=1e-4)
    (home / "resnet-18-0010.params").unlink()
    # weights that cannot serve this network are refused, naming why
    assert _train(rec, tmp_path / "deep", "--pretrained", str(home), layers="34") == 2
    assert "are ResNet-18, but num_layers is 34" in (tmp_path / "deep" / "failure").read_text()
    assert _train(rec, tmp_path / "tiny", "--pretrained", str(home), shape=(3, 32, 32)) == 2
    assert "conv0 is 7x7, but images of height 32 take a 3x3 stem" in (tmp_path / "tiny" / "failure").read_text()
    (tmp_path / "odd.params").write_bytes(b"")
    assert _train(rec, tmp_path / "odd", "--pretrained", str(tmp_path / "odd.params")) == 2
    assert "is named PREFIX-NNNN.params" in (tmp_path / "odd" / "failure").read_text()
