"""The contract and the packaging: stubs match the .proto; the package installs as fedrecon.* only."""

import filecmp
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from fedrecon.proto import generate


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = REPO_ROOT / "proto" / "v1" / path.name
        assert committed.exists(), f"{committed} is missing; run `make stubs`"
        assert filecmp.cmp(path, committed, shallow=False), f"{committed.name} drifted; run `make stubs`"


def test_imports_are_namespaced() -> None:
    import fedrecon.proto.v1.recon_pb2_grpc as stubs

    assert stubs.__name__.startswith("fedrecon.proto.")
    for name in ("server", "client", "proto", "experiments"):
        module = sys.modules.get(name)
        assert module is None or "fedrecon" not in str(getattr(module, "__file__", "")), name


@pytest.mark.slow
def test_wheel_install_layout(tmp_path: Path) -> None:
    """A normal (non-editable) wheel holds fedrecon/{server,client,proto,...} and no top-level server/client/proto."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO_ROOT)], check=True)
    wheel = next(tmp_path.glob("fedrecon-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"fedrecon", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, tops
    for expected in ("fedrecon/main.py", "fedrecon/server/store.py", "fedrecon/client/recon_client.py",
                     "fedrecon/proto/codec.py", "fedrecon/proto/v1/recon_pb2.py",
                     "fedrecon/proto/fedrecon/v1/recon.proto", "fedrecon/experiments/__init__.py"):
        assert expected in names, expected
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = subprocess.run([sys.executable, "-c", "import fedrecon.server.store, fedrecon.client.recon_client as c; "
                          "print(c.__file__)"], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin"},
                         capture_output=True, text=True, check=True)
    assert str(site) in out.stdout
