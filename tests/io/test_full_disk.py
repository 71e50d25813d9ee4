"""A really full disk: saves into a tiny tmpfs fail with a clear error and leave what was there.

The tmpfs is mounted inside a user + mount namespace (`unshare --user --map-root-user --mount`),
so no root is needed and nothing outside the test sees it. Where the kernel or the container
forbids such namespaces the test is skipped (the simulated failures of test_bad_data.py and
test_model_folder.py still run everywhere).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, pandas as pd
    from PIL import Image
    from kedro.io import DatasetError
    from aot.datasets import ImageFolderDataset, ModelFolderDataset, TableDataset

    root = sys.argv[1]
    rng = np.random.default_rng(0)
    out = {}

    def attempt(name, save):
        try:
            save()
            out[name] = "saved"
        except DatasetError as error:
            out[name] = str(error)

    table = TableDataset(filepath=f"{root}/t.parquet")
    small = pd.DataFrame({"record_id": ["a", "b"], "n": [1, 2]})
    table.save(small)
    # Random floats do not compress: about 4 MB of parquet on a 1 MB disk.
    attempt("table", lambda: table.save(pd.DataFrame({"x": rng.random(500_000)})))
    out["table_after"] = table.load().to_dict("list")

    images = ImageFolderDataset(path=f"{root}/images")
    images.save({"a": Image.new("RGB", (28, 28), (200, 10, 10))})
    noise = {f"n{i}": Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
             for i in range(12)}
    attempt("images", lambda: images.save(noise))
    out["images_after"] = sorted(images.load())

    class Big:
        def __init__(self, mb):
            self.mb = mb
        def save_pretrained(self, path):
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump({"mb": self.mb}, f)
            with open(os.path.join(path, "model.safetensors"), "wb") as f:
                f.write(os.urandom(self.mb * 1024 * 1024))
        @classmethod
        def from_pretrained(cls, path):
            with open(os.path.join(path, "config.json")) as f:
                return cls(json.load(f)["mb"])

    sys.modules["__main__"].Big = Big
    models = ModelFolderDataset(path=f"{root}/model", loader="__main__.Big")
    models.save(Big(0))
    attempt("model", lambda: models.save(Big(4)))
    out["model_after"] = models.load().mb
    out["left"] = sorted(os.listdir(root))
    print("RESULT " + json.dumps(out))
    """
)


def _namespace_tmpfs_works(mount: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=64k tmpfs {mount}"],
        capture_output=True,
    )  # fmt: skip
    return probe.returncode == 0


def test_saves_on_a_full_disk_fail_cleanly_and_keep_the_previous_version(tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    if not _namespace_tmpfs_works(mount):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare not permitted)")
    script = tmp_path / "fill.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=1m tmpfs {mount} && exec {sys.executable} {script} {mount}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    for name in ("table", "images", "model"):
        assert out[name] != "saved", f"{name}: a save larger than the disk did not fail"
        assert "No space left on device" in out[name], out[name]
    # What was there before is intact, and no temporary file or folder is left behind.
    assert out["table_after"] == {"record_id": ["a", "b"], "n": [1, 2]}
    assert out["images_after"] == ["a"]
    assert out["model_after"] == 0
    assert out["left"] == ["images", "model", "t.parquet"]
