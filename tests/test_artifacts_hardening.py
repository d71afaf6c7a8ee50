"""Hostile and damaged inputs to artifacts: one tar-member check, bounded member reads, malformed JSON members,
damaged resume checkpoints. Each must end as one ClientError naming the file and the member, never a traceback."""

import gzip
import io
import json
import re
import tarfile
import tracemalloc

import pytest
import torch
from safetensors.torch import save as st_save
from safetensors.torch import save_file as st_save_file

import openic.artifacts.extract as extract
import openic.artifacts.model as artifacts
from openic.artifacts import load_checkpoint, load_model, read_model_metadata, safe_extract, save_checkpoint, save_model
from openic.errors import ClientError, DataError
from openic.hyperparams import HyperParameters
from openic.models.resnet import create_model
from openic.prep.samples import read_cifar10_tarball

MiB = 1 << 20
SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The members of a real 4-class ResNet-20 model.tar.gz, name -> bytes."""
    hp = HyperParameters.from_strings({"num_layers": "20", "num_classes": "4", "image_shape": "3,16,16",
                                       "num_training_samples": "64", "epochs": "3"})
    torch.manual_seed(0)
    path = save_model(tmp_path_factory.mktemp("m"), create_model(20, 4, SHAPE), hp, epoch=0,
                      class_names=["a", "b", "c", "d"])
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


class Zeros:
    """A file of ``n`` zero bytes that costs no memory: the payload of a gzip bomb."""

    def __init__(self, n):
        self.n = n

    def read(self, k=-1):
        k = self.n if k < 0 else min(k, self.n)
        self.n -= k
        return bytes(k)


def write_tar(path, members, extra=()):
    """members: name -> bytes, or name -> int (that many zero bytes, streamed); extra: ready TarInfos (no data)."""
    with gzip.GzipFile(filename="", mode="wb", fileobj=open(path, "wb"), compresslevel=1) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = data if isinstance(data, int) else len(data)
                tar.addfile(info, Zeros(data) if isinstance(data, int) else io.BytesIO(data))
            for info in extra:
                tar.addfile(info)
    return path


def peak_bytes(fn):
    """(exception raised by fn, peak Python heap in bytes while it ran a second time, once lazy imports are done)."""
    with pytest.raises(ClientError):
        fn()
    tracemalloc.start()
    try:
        with pytest.raises(ClientError) as info:
            fn()
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- 1. one member check


def link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def special(name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


HOSTILE = [
    (lambda: tarfile.TarInfo("../evil"), "'..'"),
    (lambda: tarfile.TarInfo("/tmp/evil"), "absolute"),
    (lambda: tarfile.TarInfo("C:evil"), "absolute"),
    (lambda: tarfile.TarInfo("a\\..\\..\\evil"), "'..'"),
    (lambda: special("dev", tarfile.CHRTYPE), "device"),
    (lambda: special("pipe", tarfile.FIFOTYPE), "FIFO"),
    (lambda: link("sym", "/etc/passwd"), "link"),
    (lambda: link("hard", "../outside", tarfile.LNKTYPE), "link"),
]


@pytest.mark.parametrize("make, why", HOSTILE)
def test_every_reader_refuses_a_hostile_member_naming_archive_and_member(tmp_path, artifact, make, why):
    bad = make()
    model = write_tar(tmp_path / "model.tar.gz", artifact, [bad])
    where = rf"{re.escape(str(model))}: refusing tar member {re.escape(repr(bad.name))}: .*{why}"
    with pytest.raises(DataError, match=where):
        load_model(model)  # in memory: even a link that stays inside is refused, nothing can say where it leads
    cifar = write_tar(tmp_path / "cifar.tar.gz", {"cifar-10-batches-py/batches.meta": b"x"}, [make()])
    with pytest.raises(DataError, match=rf"{re.escape(str(cifar))}: refusing tar member {re.escape(repr(bad.name))}"):
        read_cifar10_tarball(cifar)


@pytest.mark.parametrize("make, why", [h for h in HOSTILE if h[1] != "link"] + [
    (lambda: link("sym", "/etc/passwd"), "absolute"), (lambda: link("win", "C:/Windows"), "absolute"),
    (lambda: link("hard", "../outside", tarfile.LNKTYPE), "outside")])
def test_safe_extract_messages_name_the_archive(tmp_path, make, why):
    bad = make()
    archive = write_tar(tmp_path / "a.tar.gz", {"ok.txt": b"fine"}, [bad])
    with pytest.raises(ClientError, match=rf"{re.escape(str(archive))}: refusing tar member .*{why}"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()


def test_check_member_is_one_function_in_formats():
    from openic.formats import tar

    root = "/srv/dest"
    tar.check_member(link("d/rel", "f.txt"), "x.tar", root)  # extraction: a link inside the root is fine
    with pytest.raises(DataError, match=r"x\.tar: refusing tar member 'd/rel': a link"):
        tar.check_member(link("d/rel", "f.txt"), "x.tar")  # in memory: refused
    assert not hasattr(artifacts, "_check_member")
    import openic.prep.samples as samples

    assert not hasattr(samples, "_check_member")


# --------------------------------------------------------------------------- 2. bounded member reads


def test_huge_weights_member_is_refused_from_its_header(tmp_path, artifact):
    # 128 MiB of zeros gzip to ~0.6 MB; the model metadata.json describes needs about 1 MB
    archive = write_tar(tmp_path / "model.tar.gz", artifact | {"model.safetensors": 128 * MiB})
    assert archive.stat().st_size < 2 * MiB
    err, peak = peak_bytes(lambda: load_model(archive))
    assert peak < 24 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert re.search(rf"{re.escape(str(archive))}: member 'model\.safetensors' declares 134,217,728 bytes, more "
                     r"than the [\d,]+ allowed", str(err)), err


@pytest.mark.parametrize("member", ["metadata.json", "classes.json", "hyperparameters.json"])
def test_huge_json_member_is_refused_from_its_header(tmp_path, artifact, member):
    archive = write_tar(tmp_path / "model.tar.gz", artifact | {member: 64 * MiB})
    err, peak = peak_bytes(lambda: load_model(archive))
    assert peak < 24 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert re.search(rf"{re.escape(str(archive))}: member '{re.escape(member)}' declares 67,108,864 bytes", str(err))


def test_huge_file_in_an_extracted_directory_is_refused(tmp_path, artifact):
    for name, data in artifact.items():
        (tmp_path / name).write_bytes(data)
    with open(tmp_path / "model.safetensors", "r+b") as f:
        f.truncate(256 * MiB)  # sparse: no disk used
    err, peak = peak_bytes(lambda: load_model(tmp_path))
    assert peak < 24 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert "model.safetensors declares 268,435,456 bytes" in str(err)


def test_metadata_describing_a_huge_model_allocates_nothing_before_the_weights_fit(tmp_path, artifact, monkeypatch):
    meta = json.loads(artifact["metadata.json"]) | {"num_classes": 100_000}
    members = dict(artifact)
    members.pop("classes.json")  # 4 names would be refused before the weights are looked at
    archive = write_tar(tmp_path / "model.tar.gz", members | {"metadata.json": json.dumps(meta).encode()})
    devices = []
    real = artifacts.create_model

    def spy(*args):
        devices.append(torch.empty(0).device.type)
        return real(*args)

    monkeypatch.setattr(artifacts, "create_model", spy)
    with pytest.raises(ClientError, match=r"model\.safetensors: weights do not fit.*fc1"):
        load_model(archive)
    assert devices == ["meta"]


def test_safe_extract_bounds_what_it_writes(tmp_path, monkeypatch):
    archive = write_tar(tmp_path / "bomb.tar.gz", {"small": b"x", "big": 64 * MiB})
    with pytest.raises(ClientError, match=rf"{re.escape(str(archive))}: member 'big' declares 67,108,864 bytes"):
        safe_extract(archive, tmp_path / "out", max_bytes=16 * MiB)
    assert not (tmp_path / "out" / "small").exists()
    both = write_tar(tmp_path / "two.tar.gz", {"a": 10 * MiB, "b": 10 * MiB})
    with pytest.raises(ClientError, match=r"the archive declares 20,971,520 bytes"):
        safe_extract(both, tmp_path / "out", max_bytes=16 * MiB)
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(ClientError, match=r"declare 20,971,521 bytes but .* has 1,000 free"):
        safe_extract(write_tar(tmp_path / "c.tar.gz", {"a": 10 * MiB, "b": 10 * MiB + 1}), tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_cifar_member_reads_are_bounded(tmp_path):
    tarball = write_tar(tmp_path / "cifar.tar.gz", {"cifar-10-batches-py/data_batch_1": 128 * MiB})
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"member 'cifar-10-batches-py/data_batch_1' declares 134,217,728 bytes"):
            read_cifar10_tarball(tarball)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * MiB


def test_short_member_data_is_refused(tmp_path):
    from openic.formats.tar import read_member

    archive = write_tar(tmp_path / "a.tar", {"m": b"0123456789"})
    with tarfile.open(archive) as tar:
        member = tar.getmember("m")
        member.size = MiB  # the stream ends before the declared size: a damaged archive
        with pytest.raises((DataError, tarfile.ReadError)):
            read_member(tar, member, archive, 2 * MiB)
        member.size = 10
        assert read_member(tar, member, archive, 10) == b"0123456789"
        with pytest.raises(DataError, match=r"member 'm' declares 10 bytes, more than the 9 allowed"):
            read_member(tar, member, archive, 9)


# --------------------------------------------------------------------------- 3. malformed JSON members


BAD_MEMBERS = [
    ("classes.json", b'{"a": 1}', r"classes\.json is \{'a': 1\}; expected a JSON list of 4 class names"),
    ("classes.json", b"not json", r"classes\.json is not valid UTF-8 JSON"),
    ("classes.json", b'["a", ["b"], "c", "d"]', r"classes\.json is .*expected a JSON list of 4"),
    ("classes.json", b'["a"]', r"classes\.json has 1 names but num_classes is 4"),
    ("classes.json", b"[" * 100_000, r"classes\.json is not valid UTF-8 JSON"),
    ("hyperparameters.json", b"[1, 2]", r"hyperparameters\.json: expected a JSON object"),
    ("hyperparameters.json", b"{", r"hyperparameters\.json is not valid UTF-8 JSON"),
    ("hyperparameters.json", b'{"epochs": {"a": 1}}', r"hyperparameters\.json: epochs = \{'a': 1\} is not valid"),
    ("metadata.json", b"\xff\xfe{", r"metadata\.json is not valid UTF-8 JSON"),
    ("metadata.json", b"[]", r"metadata\.json: expected a JSON object"),
]
BAD_METADATA = [
    ({"format_version": "x"}, r"format_version 'x' is not valid; expected an integer 1\.\.1"),
    ({"format_version": None}, r"format_version None is not valid"),
    ({"format_version": 2}, r"format_version 2 is newer"),
    ({"num_classes": "ten"}, r"num_classes 'ten' is not valid; expected a positive integer"),
    ({"num_classes": True}, r"num_classes True is not valid"),
    ({"num_classes": 0}, r"num_classes 0 is not valid"),
    ({"num_layers": 21}, r"num_layers 21 is not valid; expected one of the supported depths 18, 20"),
    ({"num_layers": [20]}, r"num_layers \[20\] is not valid"),
    ({"image_shape": "3,x"}, r"metadata\.json: image_shape '3,x' is not valid; expected"),
    ({"image_shape": None}, r"metadata\.json: image_shape None is not valid"),
    ({"image_shape": [3, 16]}, r"metadata\.json: image_shape \[3, 16\] is not valid"),
]


@pytest.mark.parametrize("member, content, message", BAD_MEMBERS + [
    ("metadata.json", change, message if message.startswith(("metadata", "format_version 2")) else
     rf"metadata\.json: {message}")
    for change, message in BAD_METADATA])
def test_malformed_json_member_is_a_client_error_naming_archive_and_member(tmp_path, artifact, member, content,
                                                                           message):
    if isinstance(content, dict):
        content = json.dumps(json.loads(artifact["metadata.json"]) | content).encode()
    archive = write_tar(tmp_path / "model.tar.gz", artifact | {member: content})
    with pytest.raises(ClientError, match=rf"^{re.escape(str(archive))}: .*{message}") as err:
        load_model(archive)
    assert type(err.value) in (ClientError, DataError)
    if member == "metadata.json":
        with pytest.raises(ClientError, match=message):
            read_model_metadata(archive)


def test_metadata_digit_strings_still_load_and_come_back_typed(tmp_path, artifact):
    meta = json.loads(artifact["metadata.json"]) | {"num_classes": "4", "image_shape": "3,16,16"}
    archive = write_tar(tmp_path / "model.tar.gz", artifact | {"metadata.json": json.dumps(meta).encode()})
    loaded = load_model(archive)
    assert (loaded.metadata["num_classes"], loaded.metadata["image_shape"]) == (4, [3, 16, 16])
    assert loaded.hyperparameters["num_classes"] == "4" and loaded.class_names == ["a", "b", "c", "d"]


def test_damaged_weights_member_is_a_client_error(tmp_path, artifact):
    archive = write_tar(tmp_path / "model.tar.gz", artifact | {"model.safetensors": artifact["model.safetensors"][:-9]})
    with pytest.raises(ClientError, match=rf"{re.escape(str(archive))}: model\.safetensors is not a valid safetensors"):
        load_model(archive)


def test_duplicate_helpers_are_gone():
    assert not hasattr(artifacts, "_image_shape") and not hasattr(artifacts, "_as_sagemaker_string")


# --------------------------------------------------------------------------- 4. damaged resume checkpoints


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def saved_checkpoint(path):
    model, optimizer = tiny()
    model(torch.rand(5, 4)).sum().backward()
    optimizer.step()
    save_checkpoint(path, model=model, optimizer=optimizer, state={"epoch": 1})
    return path


def with_header(path, edit):
    """Rewrite the checkpoint at ``path`` with its JSON header changed by ``edit`` (payload -> payload or str)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        payload = json.loads(f.metadata()["openic_checkpoint"])
    header = edit(payload)
    st_save_file(tensors, str(path), metadata={"openic_checkpoint": header if isinstance(header, str)
                                               else json.dumps(header)})
    return path


DAMAGES = [
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:-50]), r"not a readable safetensors file"),
    ("cut in the header", lambda p: p.write_bytes(p.read_bytes()[:40]), r"not a readable safetensors file"),
    ("garbage", lambda p: p.write_bytes(b"\x93NUMPY garbage" * 20), r"not a readable safetensors file"),
    ("empty", lambda p: p.write_bytes(b""), r"not a readable safetensors file"),
    ("not JSON", lambda p: with_header(p, lambda h: "{nope"), r"header is not valid JSON"),
    ("a list", lambda p: with_header(p, lambda h: [1]), r"header is list, not a JSON object"),
    ("no keys", lambda p: with_header(p, lambda h: {"format_version": 1}), r"header lacks state, model"),
    ("bad version", lambda p: with_header(p, lambda h: h | {"format_version": "x"}), r"format_version 'x'"),
    ("null version", lambda p: with_header(p, lambda h: h | {"format_version": None}), r"format_version None"),
    ("lost tensor", lambda p: with_header(p, lambda h: h | {"model": {"0.weight": {"__openic__": "tensor",
                                                                                "key": "gone"}}}),
     r"header does not match its tensors \(KeyError"),
    ("unknown tag", lambda p: with_header(p, lambda h: h | {"rng": {"__openic__": "pickle"}}),
     r"unknown checkpoint tag 'pickle'"),
    ("bad dict", lambda p: with_header(p, lambda h: h | {"state": {"__openic__": "dict", "items": [[1]]}}),
     r"header does not match its tensors"),
    ("model a list", lambda p: with_header(p, lambda h: h | {"model": [1, 2]}), r"model entry is not a map"),
    ("state a number", lambda p: with_header(p, lambda h: h | {"state": 5}), r"state entry is int"),
    ("rng empty", lambda p: with_header(p, lambda h: h | {"rng": {}}), r"RNG states cannot be restored"),
    ("rng wrong", lambda p: with_header(p, lambda h: h | {"rng": h["rng"] | {"python": [1, 2]}}),
     r"RNG states cannot be restored"),
]


@pytest.mark.parametrize("name, damage, message", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_checkpoint_is_a_client_error_suggesting_no_resume(tmp_path, name, damage, message):
    path = saved_checkpoint(tmp_path / "checkpoints" / "last")
    damage(path)
    model, optimizer = tiny()
    with pytest.raises(ClientError, match=rf"^{re.escape(str(path))}: .*{message}.*damaged.*--no-resume") as err:
        load_checkpoint(path, model=model, optimizer=optimizer)
    assert type(err.value) is ClientError


def test_newer_checkpoint_format_asks_for_an_upgrade(tmp_path):
    path = with_header(saved_checkpoint(tmp_path / "last"), lambda h: h | {"format_version": 99})
    model, optimizer = tiny()
    with pytest.raises(ClientError, match="format_version 99 is newer than 1; upgrade openic"):
        load_checkpoint(path, model=model, optimizer=optimizer)


def test_damaged_header_restores_nothing(tmp_path):
    path = with_header(saved_checkpoint(tmp_path / "last"),
                       lambda h: h | {"optimizer": {"__openic__": "tensor", "key": "gone"}})
    model, optimizer = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ClientError, match="damaged"):
        load_checkpoint(path, model=model, optimizer=optimizer)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_weights_file(tmp_path):
    from openic.artifacts.state_dict import load_weights_file

    weights = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    good = tmp_path / "best.safetensors"
    good.write_bytes(st_save(weights))
    assert all(torch.equal(load_weights_file(good)[k], v) for k, v in weights.items())
    for name, data in [("cut.safetensors", good.read_bytes()[:-4]), ("junk.safetensors", b"junk" * 10),
                       ("empty.safetensors", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ClientError, match=rf"^{re.escape(str(tmp_path / name))}: not a complete safetensors"):
            load_weights_file(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_weights_file(tmp_path / "missing.safetensors")


def test_extracted_artifact_member_that_cannot_be_read_is_named(tmp_path, artifact, monkeypatch):
    import openic.formats.tar as tar

    for name, data in artifact.items():
        (tmp_path / name).write_bytes(data)

    def denied(path, *args, **kwargs):  # the suite may run as root, for whom chmod 000 does not deny a read
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tar, "open", denied, raising=False)
    with pytest.raises(ClientError, match=rf"{tmp_path / artifacts.METADATA} cannot be read: .*Permission denied"):
        read_model_metadata(tmp_path)
