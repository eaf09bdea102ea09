"""Runs the Dockerfile's build stage without a container engine, to check that the image
builds: each RUN of the build stage runs under bash (as the Dockerfile's SHELL says) in a fresh
directory standing for the stage's file system, after COPY has copied what it names from the
build context, with the stage's ENV. What needs the base image is left out and said: apt-get
(scripts/lib.sh installs cmake here). Then the runtime stage's COPY sources must exist, and the
binary the image would run answers `version`.

    python3 scripts/dockerfile_stages.py [--keep DIR]

It builds mvllm in release mode from scratch (several minutes). Exit status 0 if it all worked.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def instructions(text):
    """(INSTRUCTION, argument) pairs: continuations joined, comments and parser directives out."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(steps):
    """The stages, each a list of its steps; FROM starts one."""
    found = []
    for step in steps:
        if step[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(step)
    return found


def inside(fs, path):
    """`path` of the image's file system, under the directory standing for it."""
    return fs / path.lstrip("/")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build in this directory and keep it")
    args = parser.parse_args()
    fs = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="mvllm-image-"))
    build, runtime = stages(instructions((ROOT / "Dockerfile").read_text()))[:2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGO_TARGET")}
    workdir = fs
    shell = ["/bin/sh", "-c"]
    for instruction, argument in build[1:]:
        if instruction == "WORKDIR":
            workdir = inside(fs, argument)
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "ENV":
            name, _, value = argument.partition("=")
            env[name] = value
        elif instruction == "SHELL":
            shell = json.loads(argument)
        elif instruction == "COPY":
            *sources, dest = argument.split()
            target = inside(fs, dest) if dest.startswith("/") else workdir / dest
            into_dir = dest.endswith("/") or len(sources) > 1
            for source in sources:
                to = target / pathlib.Path(source).name if into_dir else target
                to.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, to, dirs_exist_ok=True)
                else:
                    shutil.copy2(ROOT / source, to)
        elif instruction == "RUN":
            if "apt-get" in argument:
                print(f"skipped (the base image's packages): RUN {argument[:60]}...", flush=True)
                continue
            command = argument.replace("/usr/local/bin/", str(inside(fs, "/usr/local/bin")) + "/")
            inside(fs, "/usr/local/bin").mkdir(parents=True, exist_ok=True)
            print(f"RUN {argument[:100]}", flush=True)
            subprocess.run(shell + [command], cwd=workdir, env=env, check=True)
        elif instruction not in ("ARG",):
            print(f"not emulated: {instruction} {argument}", flush=True)

    for instruction, argument in runtime:
        if instruction == "COPY":
            words = argument.split()
            from_build = any(w.startswith("--from=") for w in words)
            source = [w for w in words if not w.startswith("--")][0]
            where = inside(fs, source) if from_build else ROOT / source
            assert where.exists(), f"the runtime stage copies {source}, which the build did not make"
    binary = inside(fs, "/usr/local/bin/mvllm")
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True)
    size = binary.stat().st_size / 2**20
    print(f"the image's binary: {version.stdout.strip()}, {size:.1f} MiB")
    if not args.keep:
        shutil.rmtree(fs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
