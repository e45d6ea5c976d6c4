"""Generate the Python gRPC stubs from proto/omnid.proto, reproducibly.

Run `python proto/generate.py` after editing the .proto; `--check` exits 1 when the committed stubs differ
from what the .proto generates (CI and tests/test_proto.py use it).

protoc derives the generated `import` lines from the .proto's path under its include root, so the file is
staged as omnid/proto/omnid.proto in a temporary root: the stubs then import each other as
`omnid.proto.omnid_pb2`, which is where the package installs them.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
GENERATED = ("omnid_pb2.py", "omnid_pb2.pyi", "omnid_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Write the generated stubs into out_dir."""
    from grpc_tools import protoc  # a build-time dependency only

    with tempfile.TemporaryDirectory() as staging:
        root = Path(staging)
        package = root / "omnid" / "proto"
        package.mkdir(parents=True)
        shutil.copy(PROTO_DIR / "omnid.proto", package / "omnid.proto")
        args = [
            "protoc",
            f"-I{root}",
            f"--python_out={root}",
            f"--pyi_out={root}",
            f"--grpc_python_out={root}",
            str(package / "omnid.proto"),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for name in GENERATED:
            shutil.copy(package / name, out_dir / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(PROTO_DIR)
        return 0
    with tempfile.TemporaryDirectory() as fresh:
        generate(Path(fresh))
        stale = [n for n in GENERATED if (Path(fresh) / n).read_bytes() != (PROTO_DIR / n).read_bytes()]
    if stale:
        print(f"stale generated stubs: {', '.join(stale)}; run python proto/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
