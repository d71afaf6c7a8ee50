"""Batch transform (openic transform): X -> X.out for folders, .rec files and manifests; re-runs skip finished
objects; a bad object is named and the rest go on; one transform per output folder."""

import json
import subprocess
import sys

import numpy as np
import pytest
from serving_helpers import SRC, image, jpeg, make_artifact, npy, png

from openic.cli import main
from openic.formats.images import decode_image
from openic.formats.recordio import IRHeader, RecordWriter, pack
from openic.serving.handler import load


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("tmodel"))


def _direct(artifact, img):
    p = load(artifact)
    return p.predict(p.preprocess([img]))[0]


def _run(artifact, src, out, *extra):
    return main(["transform", "--model", str(artifact), "--input", str(src), "--output", str(out), "--quiet", *extra])


def test_folder_each_object_gets_its_out(tmp_path, artifact, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.jpg").write_bytes(jpeg(seed=1))
    (src / "sub" / "b.png").write_bytes(png(seed=2))
    (src / "c.npy").write_bytes(npy(image(seed=3)))
    assert _run(artifact, src, tmp_path / "out") == 0
    for name, img in (("a.jpg", decode_image(jpeg(seed=1))), ("sub/b.png", image(seed=2)), ("c.npy", image(seed=3))):
        text = (tmp_path / "out" / f"{name}.out").read_text()
        assert text.endswith("\n") and text.count("\n") == 1
        np.testing.assert_allclose(json.loads(text)["prediction"], _direct(artifact, img), atol=1e-5)
    assert "3 written" in capsys.readouterr().out
    assert _run(artifact, src, tmp_path / "out") == 0  # a re-run skips what is done
    assert "0 written, 3 already done" in capsys.readouterr().out
    assert _run(artifact, src, tmp_path / "bare", "--accept", "application/json") == 0
    assert isinstance(json.loads((tmp_path / "bare" / "a.jpg.out").read_text()), list)


def test_recordio_one_line_per_record(tmp_path, artifact):
    rec = tmp_path / "set.rec"
    with RecordWriter(rec) as w:
        for i in range(5):
            w.write(pack(IRHeader(0, float(i), i, 0), jpeg(seed=10 + i)))
    assert _run(artifact, rec, tmp_path / "out") == 0
    lines = (tmp_path / "out" / "set.rec.out").read_text().splitlines()
    assert len(lines) == 5
    for i, line in enumerate(lines):
        np.testing.assert_allclose(json.loads(line)["prediction"], _direct(artifact, decode_image(jpeg(seed=10 + i))),
                                   atol=1e-5)
    assert _run(artifact, rec, tmp_path / "joined", "--assemble-with", "None") == 0
    assert (tmp_path / "joined" / "set.rec.out").read_text().count("\n") == 0


def test_both_manifest_formats(tmp_path, artifact):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(jpeg(seed=i))
    lines = tmp_path / "m.manifest"
    lines.write_text("".join(json.dumps({"source-ref": f"imgs/{i}.jpg", "class": 0}) + "\n" for i in range(3)))
    assert _run(artifact, lines, tmp_path / "o1") == 0
    listed = tmp_path / "list.manifest"
    listed.write_text(json.dumps([{"prefix": str(tmp_path / "imgs")}, "0.jpg", "2.jpg"]))
    assert _run(artifact, listed, tmp_path / "o2") == 0
    assert sorted(p.name for p in (tmp_path / "o1").glob("*.out")) == ["0.jpg.out", "1.jpg.out", "2.jpg.out"]
    assert sorted(p.name for p in (tmp_path / "o2").glob("*.out")) == ["0.jpg.out", "2.jpg.out"]


def test_bad_object_is_named_and_the_rest_go_on(tmp_path, artifact, capsys, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.jpg").write_bytes(jpeg())
    (src / "bad.jpg").write_bytes(b"not an image")
    (src / "big.jpg").write_bytes(jpeg() + b"\0" * (1024 * 1024 + 10))
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")
    assert _run(artifact, src, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "bad.jpg: failed: the body is not a decodable" in err and "big.jpg: failed:" in err and "payload" in err
    assert (tmp_path / "out" / "good.jpg.out").exists() and not (tmp_path / "out" / "bad.jpg.out").exists()


def test_split_type_that_does_not_fit_the_input(tmp_path, artifact, capsys):
    (tmp_path / "in").mkdir()
    assert _run(artifact, tmp_path / "in", tmp_path / "o", "--split-type", "RecordIO") == 2
    assert "RecordIO needs a .rec file" in capsys.readouterr().err
    assert _run(artifact, tmp_path / "in", tmp_path / "o", "--split-type", "Line") == 2
    assert "Line needs a manifest" in capsys.readouterr().err


def test_two_transforms_into_one_folder_refused(tmp_path, artifact, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys, time; from pathlib import Path; from openic.fileio import FileLock\n"
            "with FileLock(Path(sys.argv[1]), 'x'):\n    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / ".openic-transform.lock")],
                              env={"PYTHONPATH": SRC}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a.jpg").write_bytes(jpeg())
        assert _run(artifact, tmp_path / "in", out) == 2
        assert str(out) in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_s3_input_and_output(tmp_path, artifact, s3_env, capsys, monkeypatch):
    """Batch transform from s3://bucket/in/ to s3://bucket/out/ (moto's server): every object's .out lands under
    the output prefix with the local run's bytes; a re-run uploads nothing new; a missing input is named."""
    from openic.storage import client

    monkeypatch.setenv("OPENIC_S3_CACHE", str(tmp_path / "cache"))
    s3 = client()
    files = {"a.jpg": jpeg(seed=1), "sub/b.png": png(seed=2), "c.npy": npy(image(seed=3))}
    for key, data in files.items():
        s3.put_object(Bucket=s3_env, Key=f"in/{key}", Body=data)
        (tmp_path / "local" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "local" / key).write_bytes(data)
    assert _run(artifact, f"s3://{s3_env}/in", f"s3://{s3_env}/out") == 0
    assert _run(artifact, tmp_path / "local", tmp_path / "local-out") == 0
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="out/")["Contents"])
    assert keys == [f"out/{k}.out" for k in sorted(files)]  # no lock file uploaded
    for key in files:
        body = s3.get_object(Bucket=s3_env, Key=f"out/{key}.out")["Body"].read()
        assert body == (tmp_path / "local-out" / f"{key}.out").read_bytes()
    capsys.readouterr()
    assert _run(artifact, f"s3://{s3_env}/in", f"s3://{s3_env}/out") == 0
    assert "0 written, 3 already done" in capsys.readouterr().out
    assert _run(artifact, f"s3://{s3_env}/missing", tmp_path / "o") == 2
    assert f"s3://{s3_env}/missing" in capsys.readouterr().err
    lease = {"owner": "x", "host": "algo-2", "pid": 77, "space": "another-machine/pid:[1]", "ttl_s": 600}
    s3.put_object(Bucket=s3_env, Key="out2/.openic-transform.lock", Body=json.dumps(lease).encode())
    assert _run(artifact, f"s3://{s3_env}/in", f"s3://{s3_env}/out2") == 2  # another host's transform holds it
    assert "another job (host algo-2, PID 77) holds its lease" in capsys.readouterr().err
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="out2/")["Contents"]] == \
        ["out2/.openic-transform.lock"]
