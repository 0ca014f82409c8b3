"""A real Triton Inference Server without Docker: the `tritonserver` binary inside the pinned nvidia-pytriton wheel.

    python -m tools.triton install                      # the wheel into .triton/pytriton, the model's env
    python -m tools.triton serve --repo .triton/repo    # write the repository, run tritonserver in the foreground

The wheel is unpacked into its own folder, not the venv: its Python package pins numpy<2, which the project
cannot take; only its binary, libraries and python backend are used. Three things make that binary run
here: its bundled libraries on LD_LIBRARY_PATH, the python backend's stub for this Python version copied
into the backend's folder (where Triton looks for it), and the model's EXECUTION_ENV_PATH pointing at a
venv of its own, `.triton/env` (Triton activates it before starting the stub, so the model imports numpy and
onnxruntime from it). That venv holds numpy 1.x: the stub is built against numpy 1's C API, and with the
project's numpy 2 it read inputs wrongly and returned empty outputs (a trial: "output tensor shape does not
match size of output").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tools.servers import LOOPBACK, ServerProcess, free_port, server_process

ROOT = Path(__file__).resolve().parents[1]
# nvidia-pytriton 0.7.0 carries tritonserver 2.51 (manylinux_2_35, x86_64) with the python backend.
WHEEL = "nvidia-pytriton==0.7.0"
HOME = ROOT / ".triton" / "pytriton"
# The python-backend model's environment (EXECUTION_ENV_PATH): numpy 1 for the stub, ONNX Runtime for the model.
MODEL_ENV = ROOT / ".triton" / "env"
MODEL_ENV_PACKAGES = ("numpy==1.26.4", "onnxruntime==1.32.0")
DEFAULT_PORTS = {"http": 8700, "grpc": 8701, "metrics": 8702}  # Triton's own 8000 is the detect API's


@dataclass(frozen=True)
class TritonInstall:
    home: Path

    @property
    def server_dir(self) -> Path:
        return self.home / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.server_dir / "backends"

    def env(self) -> dict[str, str]:
        libs = [self.home / "nvidia_pytriton.libs", self.server_dir / "external_libs"]
        paths = [str(p) for p in libs if p.is_dir()]
        if os.environ.get("LD_LIBRARY_PATH"):
            paths.append(os.environ["LD_LIBRARY_PATH"])
        return {"LD_LIBRARY_PATH": ":".join(paths)}

    def prepare(self) -> None:
        """The stub for this interpreter's Python version, where the python backend looks for it."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise RuntimeError(f"{WHEEL} has no python-backend stub for Python {version}")
        target = self.backends / "python" / "triton_python_backend_stub"
        if not target.is_file() or target.stat().st_size != stub.stat().st_size:
            shutil.copy2(stub, target)

    def command(self, repo: Path, ports: dict[str, int], *, host: str = LOOPBACK) -> list[str]:
        return [
            str(self.binary),
            f"--model-repository={repo}",
            f"--backend-directory={self.backends}",
            f"--http-address={host}",
            f"--grpc-address={host}",
            f"--metrics-address={host}",
            f"--http-port={ports['http']}",
            f"--grpc-port={ports['grpc']}",
            f"--metrics-port={ports['metrics']}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
            # Models come only from the repository written at start; nothing is loaded over the API.
            "--model-control-mode=none",
            "--exit-timeout-secs=5",
        ]


def installed(home: Path = HOME) -> TritonInstall | None:
    install = TritonInstall(home)
    return install if install.binary.is_file() else None


def install_model_env(env: Path = MODEL_ENV) -> Path:
    """The venv the python-backend model runs in (once; from PyPI through pip)."""
    marker = env / ".rtdetect-packages"
    wanted = "\n".join(MODEL_ENV_PACKAGES)
    if not (marker.is_file() and marker.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        subprocess.run(
            [str(env / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *MODEL_ENV_PACKAGES],
            check=True,
        )
        marker.write_text(wanted)
    return env


def install(home: Path = HOME) -> TritonInstall:
    """Unpack the pinned wheel into `home` and make the model's venv (from PyPI through pip; once)."""
    found = installed(home)
    if found is None:
        home.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
             "--target", str(home), WHEEL],
            check=True,
        )  # fmt: skip
        found = installed(home)
        if found is None:
            raise RuntimeError(f"{WHEEL} installed into {home} but has no tritonserver binary")
    found.prepare()
    install_model_env()
    return found


def write_repo(
    model_dir: Path, repo: Path, *, max_queue_delay_us: int = 2000, intra_op_threads: int = 0
) -> Path:
    """The default model as a python-backend model running ONNX Runtime in the model's venv."""
    from engine_build.triton_repo import RepoOptions, write_repository

    options = RepoOptions(
        platform="python",
        python_env=MODEL_ENV,
        max_queue_delay_us=max_queue_delay_us,
        intra_op_threads=intra_op_threads,
    )
    return write_repository(model_dir, repo, options)


@contextmanager
def triton_process(
    repo: Path,
    log_path: Path,
    *,
    ports: dict[str, int] | None = None,
    install_dir: TritonInstall | None = None,
    timeout_s: float = 120.0,
) -> Iterator[tuple[ServerProcess, dict[str, int]]]:
    """tritonserver on loopback (`ports`, or free ones chosen now), ready (every model loaded) when the block
    starts."""
    triton = install_dir or installed()
    if triton is None:
        raise RuntimeError(f"tritonserver is not installed: python -m tools.triton install ({WHEEL})")
    triton.prepare()
    ports = ports or {name: free_port() for name in DEFAULT_PORTS}
    with server_process(
        triton.command(repo, ports),
        ready_url=f"http://{LOOPBACK}:{ports['http']}/v2/health/ready",
        log_path=log_path,
        env=triton.env(),
        timeout_s=timeout_s,
    ) as server:
        yield server, ports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.triton", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help=f"unpack {WHEEL} into {HOME.relative_to(ROOT)}")
    p = sub.add_parser("serve", help="write the repository and run tritonserver in the foreground")
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--repo", type=Path, default=ROOT / ".triton" / "repo")
    p.add_argument("--host", default=LOOPBACK)
    for name, port in DEFAULT_PORTS.items():
        p.add_argument(
            f"--{name}-port", type=int, default=int(os.environ.get(f"TRITON_{name.upper()}_PORT", port))
        )
    args = parser.parse_args(argv)
    triton = install()
    if args.command == "install":
        print(triton.binary)
        return 0
    from inference.paths import default_model_dir

    write_repo(args.model_dir or default_model_dir(), args.repo)
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    command = triton.command(args.repo, ports, host=args.host)
    print(f"tritonserver: gRPC {args.host}:{ports['grpc']} (RTDETECT_BACKEND=triton "
          f"RTDETECT_TRITON__URL={args.host}:{ports['grpc']}), HTTP :{ports['http']}, "
          f"metrics :{ports['metrics']}", file=sys.stderr, flush=True)  # fmt: skip
    os.execve(command[0], command, {**os.environ, **triton.env()})


if __name__ == "__main__":
    sys.exit(main())
