"""Weights by name: torch hub's cache, hash check, download from a local server (no internet),
the catalog's resolvers, ``--backbone-weights imagenet`` and ``fcnseg weights``."""
from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fcnseg.cli import main
from fcnseg.errors import CheckpointError
from fcnseg.models import build_model
from fcnseg.weights import catalog, hub
from fcnseg.weights.catalog import WeightSpec, find_weights, register_weights, resolve_backbone_weights


class WeightsServer:
    """Serves ``files[name]`` at ``/<name>``; records every requested path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tensor_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path, a local server as FCNSEG_WEIGHTS_BASE_URL, and a
    test backbone entry for the ``small`` backbone whose file name carries its own hash prefix."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    server = WeightsServer()
    monkeypatch.setenv("FCNSEG_WEIGHTS_BASE_URL", server.base)
    torch.manual_seed(0)
    source = build_model("fcn8s_small", width=8).backbone.state_dict()
    data = tensor_bytes(source)
    filename = f"small-w8-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files[filename] = data
    spec = register_weights(WeightSpec(
        name="small_test", filename=filename, kind="backbone", arch="small", tag="imagenet",
        description="test weights", url="http://example.invalid/" + filename, size="-",
        input_convention="imagenet", accuracy="-", source="this test", use="--backbone-weights imagenet"))
    hub._VERIFIED.clear()
    yield {"server": server, "spec": spec, "source": source, "cache": tmp_path / "torch" / "hub" / "checkpoints"}
    catalog.WEIGHTS.pop("small_test", None)
    hub._VERIFIED.clear()
    server.close()


def test_cache_dir_is_torch_hub_s(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert hub.cache_dir() == tmp_path / "th" / "hub" / "checkpoints"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    assert hub.cache_dir() == Path(torch.hub.get_dir()) / "checkpoints"  # the very folder torchvision uses


def test_hash_prefix_as_torch_hub_reads_it():
    assert hub.hash_prefix("vgg16-397923af.pth") == "397923af"
    assert hub.hash_prefix("alexnet-owt-7be5be79.pth") == "7be5be79"
    assert hub.hash_prefix("fcn_resnet101_coco-7ecb50ca.pth") == "7ecb50ca"
    assert hub.hash_prefix("fcn8s-heavy-pascal.caffemodel") is None
    assert hub.hash_prefix("fcn8s_from_caffe.pth") is None


def test_imagenet_names_resolve_to_the_official_torchvision_files(monkeypatch):
    monkeypatch.delenv("FCNSEG_WEIGHTS_BASE_URL", raising=False)
    expected = {"vgg16": "vgg16-397923af.pth", "alexnet": "alexnet-owt-7be5be79.pth",
                "resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth",
                "resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}
    for arch, filename in expected.items():
        spec = find_weights("imagenet", arch)
        assert spec.filename == filename and spec.kind == "backbone"
        assert spec.download_url == f"https://download.pytorch.org/models/{filename}"
        assert spec.sha256_prefix == filename.rsplit("-", 1)[1][:8]
        assert find_weights(filename) is spec  # the file name works as a name too


def test_backbone_by_name_downloads_once_then_uses_the_cache(env):
    server, spec, cache = env["server"], env["spec"], env["cache"]
    model = build_model("fcn8s_small", width=8, backbone_weights="imagenet")
    for k, v in env["source"].items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert server.requests == [f"/{spec.filename}"]
    assert sorted(p.name for p in cache.iterdir()) == [spec.filename]  # no .part left
    hub._VERIFIED.clear()  # a new process: the cached file is re-verified, not re-fetched
    build_model("fcn8s_small", width=8, backbone_weights="imagenet")
    build_model("fcn8s_small", width=8, backbone_weights=spec.filename)  # by file name too
    assert server.requests == [f"/{spec.filename}"]


def test_file_already_in_cache_is_never_fetched(env):
    """A user who has the file from torchvision (same folder, same name) downloads nothing."""
    env["cache"].mkdir(parents=True)
    (env["cache"] / env["spec"].filename).write_bytes(env["server"].files[env["spec"].filename])
    build_model("fcn8s_small", width=8, backbone_weights="imagenet")
    assert env["server"].requests == []


def test_hash_mismatch_is_refused_and_leaves_nothing(env):
    spec, server, cache = env["spec"], env["server"], env["cache"]
    server.files[spec.filename] = tensor_bytes({"x": torch.zeros(3)})  # other content, same name
    with pytest.raises(CheckpointError) as e:
        build_model("fcn8s_small", width=8, backbone_weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "checksum mismatch" in msg
    assert f"{server.base}/{spec.filename}" in msg and spec.sha256_prefix in msg
    assert str(cache / spec.filename) in msg  # where to put it by hand
    assert not cache.exists() or list(cache.iterdir()) == []


def test_corrupt_file_in_cache_is_refused_with_advice(env):
    env["cache"].mkdir(parents=True)
    bad = env["cache"] / env["spec"].filename
    bad.write_bytes(b"not the file")
    with pytest.raises(CheckpointError, match=r"hash mismatch.*should start with .*Delete it"):
        build_model("fcn8s_small", width=8, backbone_weights="imagenet")
    assert env["server"].requests == []


def test_offline_error_names_url_hash_and_place(env):
    spec, server, cache = env["spec"], env["server"], env["cache"]
    server.close()
    with pytest.raises(CheckpointError) as e:
        hub.fetch(spec.download_url, spec.filename, sha256_prefix=spec.sha256_prefix, retries=0, timeout=2,
                  progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "cannot connect" in msg
    assert spec.download_url in msg and f"start with {spec.sha256_prefix}" in msg
    assert f"save it as {cache / spec.filename}" in msg
    assert not (cache / spec.filename).exists()


def test_http_404_is_one_clear_error(env):
    spec = env["spec"]
    env["server"].files.clear()
    with pytest.raises(CheckpointError, match=r"HTTP 404.*To install it by hand"):
        spec.resolve(spec, True)


def test_a_path_still_works_and_bad_names_are_explained(env, tmp_path):
    path = tmp_path / "mine.pth"
    torch.save(env["source"], path)
    assert resolve_backbone_weights("small", path) == path
    assert resolve_backbone_weights("small", str(path)) == str(path)
    with pytest.raises(CheckpointError, match=r"'imagenett': no such file.*known names for small: imagenet"):
        build_model("fcn8s_small", width=8, backbone_weights="imagenett")
    with pytest.raises(CheckpointError, match="holds vgg16 weights, not small"):
        resolve_backbone_weights("small", "vgg16-397923af.pth")
    with pytest.raises(CheckpointError, match="not backbone weights; use it with: fcnseg import torchvision"):
        resolve_backbone_weights("resnet50", "fcn_resnet50_coco")
    assert env["server"].requests == []


def test_another_resolver_can_be_registered(env, tmp_path):
    """E.g. weights shipped inside a pip package: the entry resolves to that file, no download."""
    packaged = tmp_path / "site-packages" / "somepkg" / "small.pth"
    packaged.parent.mkdir(parents=True)
    torch.save(env["source"], packaged)
    calls = []

    def from_package(spec: WeightSpec, download: bool):
        calls.append(download)
        return packaged

    catalog.WEIGHTS.pop("small_test")
    register_weights(WeightSpec(name="small_test", filename="small.pth", kind="backbone", arch="small",
                                tag="imagenet", description="packaged", url=None, size="-",
                                input_convention="imagenet", accuracy="-", source="-", use="-",
                                resolve=from_package))
    model = build_model("fcn8s_small", width=8, backbone_weights="imagenet")
    assert torch.equal(model.backbone.stem[0].weight, env["source"]["stem.0.weight"])
    assert calls == [True] and env["server"].requests == []


def test_weights_command_lists_the_table(env, capsys):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for name in ("vgg16_imagenet", "alexnet_imagenet", "resnet18_imagenet", "resnet34_imagenet",
                 "resnet50_imagenet", "resnet101_imagenet", "fcn_resnet50_coco", "fcn_resnet101_coco",
                 "fcn32s_heavy_pascal", "fcn16s_heavy_pascal", "fcn8s_heavy_pascal", "fcn8s_atonce_pascal",
                 "vgg16_caffe", "pytorch_fcn8s", "small_test"):
        assert name in rows, name
    assert "seg11valid mIoU 63.6" in rows["fcn32s_heavy_pascal"]
    assert "seg11valid mIoU 65.0" in rows["fcn16s_heavy_pascal"]
    assert "seg11valid mIoU 65.5" in rows["fcn8s_heavy_pascal"]
    assert "seg11valid mIoU 65.4" in rows["fcn8s_atonce_pascal"]
    assert "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel" in rows["fcn8s_heavy_pascal"]
    assert "fcnseg import caffe" in rows["fcn8s_heavy_pascal"]
    vgg = [c.strip() for c in rows["vgg16_imagenet"].split("|")[1:-1]]
    assert vgg[3] == "sha256:397923af..." and vgg[4] == "527.8 MB" and vgg[5] == "imagenet"
    assert "71.592" in vgg[6] and vgg[7] == "no"
    assert "https://pytorch.org/vision/stable/models/generated/torchvision.models.vgg16.html" in out
    assert [c.strip() for c in rows["small_test"].split("|")[1:-1]][7] == "no"
    # --download fetches one into the cache; the table then says so
    assert main(["weights", "--download", "small_test"]) == 0
    assert (env["cache"] / env["spec"].filename).is_file()
    assert main(["weights", "--kind", "backbone"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| small_test "))
    assert [c.strip() for c in row.split("|")[1:-1]][7] == "yes"
    assert "fcn_resnet50_coco" not in out  # --kind filters


def test_weights_command_json(env, capsys):
    import json

    assert main(["weights", "--json", "--kind", "torchvision"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["fcn_resnet50_coco", "fcn_resnet101_coco"]
    r = rows[0]
    assert r["url"] == "https://download.pytorch.org/models/fcn_resnet50_coco-1167a1af.pth"
    assert r["checksum"] == "sha256:1167a1af..." and r["size"] == "135.0 MB" and r["cached"] is None
    assert r["input_convention"] == "imagenet" and "mIoU 60.5" in r["accuracy"]
    assert r["use"] == "fcnseg import torchvision fcn_resnet50_coco --out model.pt"


def test_weights_command_unknown_name_is_one_line(env, capsys):
    assert main(["weights", "--download", "vgg16_imagenett"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown weights 'vgg16_imagenett'" in err and "Did you mean vgg16_imagenet" in err


def test_train_accepts_a_weights_name(synthetic_voc, tmp_path):
    from fcnseg.engine.config import TrainConfig, resolve
    from fcnseg.errors import ConfigError

    cfg = resolve(TrainConfig(data=str(synthetic_voc), out=str(tmp_path / "run"), model="fcn8s_vgg16",
                              backbone_weights="imagenet"))
    assert cfg.backbone_weights == "imagenet"
    with pytest.raises(ConfigError, match="no such file; or a name from `fcnseg weights`"):
        resolve(TrainConfig(data=str(synthetic_voc), out=str(tmp_path / "run"), model="fcn8s_vgg16",
                            backbone_weights="imagenett"))
